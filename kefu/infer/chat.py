"""The terminal chat behind `kefu chat RUN`: read lines, stream replies, keep the conversation.

Input is any iterable of lines and output any callable that takes text, so the loop knows nothing
of terminals: the CLI gives it stdin and a `write` that prints and flushes; tests give it a list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kefu.infer.generate import SamplingConfig, stream
from kefu.models import LanguageModel
from kefu.text.tokenizer import ChatTokenizer

EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"


def chat_loop(
    model: LanguageModel,
    tokenizer: ChatTokenizer,
    sampling: SamplingConfig,
    lines: Iterable[str],
    write: Callable[[str], None],
    system: str | None = None,
    context_length: int | None = None,
) -> int:
    """Answer each line as the user's next message; return how many replies were given.

    `/exit` or `/quit` ends the chat, `/reset` forgets the conversation, empty lines are skipped.
    When the conversation outgrows the context, its oldest exchanges are dropped (the system
    message stays); a message that does not fit even alone is refused with a one-line note.

    Args:
        lines: the user's input, one message per line (trailing newlines are fine).
        write: called with each piece of output text; it adds no newline of its own.
        system: the system message that starts every conversation.
        context_length: the most tokens the model can see, prompt and reply together;
            none for a model without a limit (the LSTM).
    """
    head = [{"role": "system", "content": system}] if system else []
    exchanges: list[tuple[str, str]] = []  # (user, assistant), oldest first
    replies = 0
    for line in lines:
        message = line.strip()
        if not message:
            continue
        if message in EXIT_COMMANDS:
            break
        if message == RESET_COMMAND:
            exchanges = []
            write("(conversation cleared)\n")
            continue
        prompt = _fit(tokenizer, head, exchanges, message, sampling, context_length)
        if prompt is None:
            write(_too_long(tokenizer, head, message, sampling, context_length))
            continue
        write("assistant> ")
        pieces = []
        for piece in stream(model, tokenizer, prompt, sampling):
            write(piece)
            pieces.append(piece)
        write("\n")
        exchanges.append((message, "".join(pieces)))
        replies += 1
    return replies


def _messages(
    head: list[dict[str, str]], exchanges: list[tuple[str, str]], message: str
) -> list[dict[str, str]]:
    messages = list(head)
    for user, assistant in exchanges:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return [*messages, {"role": "user", "content": message}]


def _fit(
    tokenizer: ChatTokenizer,
    head: list[dict[str, str]],
    exchanges: list[tuple[str, str]],
    message: str,
    sampling: SamplingConfig,
    context_length: int | None,
) -> list[int] | None:
    """The prompt for `message`, dropping the oldest exchanges (in place) until it fits; or None."""
    while True:
        ids = tokenizer.render(_messages(head, exchanges, message), add_generation_prompt=True).ids
        if context_length is None or len(ids) + sampling.max_new_tokens <= context_length:
            return ids
        if not exchanges:
            return None
        # Later prompts only grow, so what does not fit now never will: forget it for good.
        del exchanges[0]


def _too_long(
    tokenizer: ChatTokenizer,
    head: list[dict[str, str]],
    message: str,
    sampling: SamplingConfig,
    context_length: int | None,
) -> str:
    size = len(tokenizer.render(_messages(head, [], message), add_generation_prompt=True).ids)
    return (
        f"(not sent: this message takes {size} tokens and the reply up to "
        f"{sampling.max_new_tokens}, more than the model's context of {context_length}; "
        "please shorten it)\n"
    )
