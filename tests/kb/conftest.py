import pytest

from kefu.kb.index import build_kb
from tests.conftest import REPO

ACME = [REPO / "examples" / "acme_bank" / "faq_en.csv", REPO / "examples" / "acme_bank" / "faq_zh.csv"]  # fmt: skip


@pytest.fixture(scope="session")
def acme(tmp_path_factory):
    """The demo bank's FAQ in both languages, built once (MiniLM embeds the English texts).
    Tests copy it before they calibrate it."""
    folder = tmp_path_factory.mktemp("kb") / "acme"
    report = build_kb(ACME, folder)
    return folder, report
