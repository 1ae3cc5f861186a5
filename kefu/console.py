"""What commands show a person: one stderr console, progress bars with rate and ETA, `--quiet`.

Results a script may parse go to stdout; progress and notes go to stderr, and `--quiet`
silences them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

if TYPE_CHECKING:
    from kefu.data.records import Reject

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)


class _Settings:
    quiet = False


settings = _Settings()


class _ItemRate(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"? {self.unit}/s", style="cyan")


def progress(unit: str = "bytes") -> Progress:
    """A progress bar that shows rate and ETA; `unit` is "bytes" or a noun such as "records"."""
    counts: list[ProgressColumn] = (
        [DownloadColumn(), TransferSpeedColumn()]
        if unit == "bytes"
        else [MofNCompleteColumn(), _ItemRate(unit)]
    )
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=stderr,
        disable=settings.quiet,
        transient=False,
    )


def note(message: str) -> None:
    """A line for the person running the command (hidden by --quiet)."""
    if not settings.quiet:
        stderr.print(message)


def note_rejects(rejects: list[Reject], rest: str = "", shown: int = 20) -> None:
    """The first `shown` rejects as "file:line: reason" notes, then how many more and where
    they are listed (`rest`)."""
    for reject in rejects[:shown]:
        note(f"[yellow]{reject.where}[/]: {reject.reason}")
    if len(rejects) > shown:
        note(f"… and {len(rejects) - shown} more{rest}")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No tqdm bars from transformers (loading, saving) inside kefu's own output; restored after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
