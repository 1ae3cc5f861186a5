"""The web chat page at `/` in a real browser (Debian's chromium) against a live server.

Each test opens the page of a fresh server (SQLite), talks to the small demo assistant as a
customer would — typing, pressing Enter, clicking — and then checks what the server stored:
the answer shown is the answer stored, the thumbs-down is a feedback row, the button is a
hand-off in the queue.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.serve.conftest import FAQ_EN, FAQ_ZH, LiveServer

CHROMIUM = Path("/usr/bin/chromium")
MESSAGE_ID = re.compile(r"^\d+$")
ANSWER_TIMEOUT_MS = 30_000  # a streamed answer, sources and feedback buttons included
# Off-topic for a bank, so nothing in the FAQ is confident: the generator answers (the first
# low-confidence turn of a conversation is generated; the second would go to a person).
OFF_TOPIC = "Can you recommend a good pizza recipe for tonight?"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-background-networking"],
            headless=True,
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh English-speaking visitor; the test fails on any uncaught error in the page."""
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"errors in the page's JavaScript: {errors}"


def ask(page: Page, text: str):
    """Type a question, press Enter and wait for the whole answer; the answer's bubble."""
    count = page.get_by_test_id("assistant-message").count()
    page.get_by_test_id("input").fill(text)
    page.get_by_test_id("input").press("Enter")
    answer = page.get_by_test_id("assistant-message").nth(count)
    # The message id (and the feedback buttons) arrive with the last chunk.
    expect(answer).to_have_attribute("data-message-id", MESSAGE_ID, timeout=ANSWER_TIMEOUT_MS)
    expect(page.get_by_test_id("input")).to_be_enabled()
    return answer


def test_english_faq_answer_with_sources_and_thumbs_down(sqlite_server: LiveServer, page: Page):
    assistant = sqlite_server.app.state.service.assistant
    page.goto(sqlite_server.url + "/")
    expect(page.get_by_test_id("assistant-name")).to_have_text(assistant.config.assistant.name)
    expect(page.get_by_test_id("greeting")).to_have_text(assistant.greeting("en"))

    answer = ask(page, FAQ_EN)
    message = sqlite_server.store.message(int(answer.get_attribute("data-message-id")))
    assert message.role == "assistant" and message.route == "faq"
    assert answer.text_content().strip() != ""
    assert answer.text_content() == message.text  # shown exactly as stored, newlines included
    assert page.evaluate("sessionStorage.getItem('kefu.conversation_id')") == (
        message.conversation_id
    )

    links = page.get_by_test_id("source-link")
    expect(links.first).to_be_visible()
    stored = {(source["title"], source["url"]) for source in message.sources if source["url"]}
    shown = links.evaluate_all("links => links.map(a => [a.textContent, a.href, a.target, a.rel])")
    assert {(title, url) for title, url, _, _ in shown} <= stored
    assert all(target == "_blank" and "noopener" in rel for _, _, target, rel in shown)

    page.get_by_test_id("thumbs-down").click()
    expect(page.get_by_test_id("feedback-recorded")).to_be_visible()
    expect(page.get_by_test_id("thumbs-down")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("thumbs-up")).to_have_attribute("aria-pressed", "false")
    expect(page.get_by_test_id("thumbs-up")).to_be_disabled()
    expect(page.get_by_test_id("thumbs-down")).to_be_disabled()
    feedback = sqlite_server.store.feedback(message.id)
    assert [(f.message_id, f.rating) for f in feedback] == [(message.id, -1)]


def test_chinese_interface_and_answer_and_reload(sqlite_server: LiveServer, page: Page):
    assistant = sqlite_server.app.state.service.assistant
    page.goto(sqlite_server.url + "/")
    expect(page.get_by_test_id("send")).to_have_text("Send")

    page.get_by_test_id("lang-toggle").click()
    expect(page.get_by_test_id("send")).to_have_text("发送")
    expect(page.get_by_test_id("handoff-button")).to_have_text("转人工")
    expect(page.get_by_test_id("lang-toggle")).to_have_text("EN")
    expect(page.get_by_test_id("input")).to_have_attribute("placeholder", "请输入您的问题…")
    expect(page.get_by_test_id("greeting")).to_have_text(assistant.greeting("zh"))
    assert page.evaluate("document.documentElement.lang") == "zh-CN"

    answer = ask(page, FAQ_ZH)
    message = sqlite_server.store.message(int(answer.get_attribute("data-message-id")))
    assert message.route == "faq"
    assert answer.text_content().strip() != ""
    assert answer.text_content() == message.text
    expect(page.get_by_test_id("source")).not_to_have_count(0)

    # A reload keeps the language and continues the conversation, its history shown again.
    page.reload()
    expect(page.get_by_test_id("send")).to_have_text("发送")
    expect(page.get_by_test_id("user-message")).to_have_text([FAQ_ZH])
    expect(page.get_by_test_id("assistant-message")).to_have_text([message.text])
    answer = ask(page, FAQ_ZH)
    follow_up = sqlite_server.store.message(int(answer.get_attribute("data-message-id")))
    assert follow_up.conversation_id == message.conversation_id


def test_talk_to_a_person_button(sqlite_server: LiveServer, page: Page):
    assistant = sqlite_server.app.state.service.assistant
    page.goto(sqlite_server.url + "/")
    answer = ask(page, FAQ_EN)
    conversation_id = sqlite_server.store.message(
        int(answer.get_attribute("data-message-id"))
    ).conversation_id
    assert sqlite_server.store.handoffs() == []

    page.get_by_test_id("handoff-button").click()
    expect(page.get_by_test_id("system-note")).to_have_text(assistant.handoff_message("en"))
    handoffs = sqlite_server.store.handoffs()
    assert [(h.conversation_id, h.status) for h in handoffs] == [(conversation_id, "queued")]


def test_talk_to_a_person_before_any_message_asks_through_the_chat(
    sqlite_server: LiveServer, page: Page
):
    page.goto(sqlite_server.url + "/")
    page.get_by_test_id("handoff-button").click()
    expect(page.get_by_test_id("user-message")).to_have_text(["I want to talk to a person"])
    answer = page.get_by_test_id("assistant-message")
    expect(answer).to_have_attribute("data-message-id", MESSAGE_ID, timeout=ANSWER_TIMEOUT_MS)
    message = sqlite_server.store.message(int(answer.get_attribute("data-message-id")))
    assert message.route == "handoff"
    expect(page.get_by_test_id("system-note")).to_have_text(
        "A person will take over this conversation shortly."
    )
    handoffs = sqlite_server.store.handoffs()
    assert [h.conversation_id for h in handoffs] == [message.conversation_id]


def test_generated_answer_streams_into_the_bubble(
    sqlite_server: LiveServer, page: Page, monkeypatch: pytest.MonkeyPatch
):
    # The tiny test generator makes all its tokens in a few milliseconds, which the browser may
    # read in one go; pace them like a real model on a CPU (the server runs in this process).
    service = sqlite_server.app.state.service
    pieces = service.pieces

    def paced(*args, **kwargs):
        for piece in pieces(*args, **kwargs):
            time.sleep(0.02)
            yield piece

    monkeypatch.setattr(service, "pieces", paced)
    page.goto(sqlite_server.url + "/")
    # Record the answer bubble's length each time the page changes it.
    page.evaluate(
        """() => {
          window.lengths = [];
          new MutationObserver(() => {
            const bubble = document.querySelector('[data-testid="assistant-message"]');
            if (bubble) window.lengths.push(bubble.textContent.length);
          }).observe(document.getElementById("messages"),
                     {subtree: true, childList: true, characterData: true});
        }"""
    )
    answer = ask(page, OFF_TOPIC)
    message = sqlite_server.store.message(int(answer.get_attribute("data-message-id")))
    assert message.route == "generator"
    assert answer.text_content() == message.text
    lengths = page.evaluate("window.lengths")
    grown = sorted({n for n in lengths if n > 0})
    assert len(grown) > 1, f"the answer appeared in one step, not streamed: lengths {lengths}"
    assert grown[-1] == len(message.text)


def test_error_is_shown_and_the_chat_carries_on(sqlite_server: LiveServer, page: Page):
    page.goto(sqlite_server.url + "/")
    # Over the demo's max_body_bytes (8192): the server refuses it with a JSON error body.
    page.get_by_test_id("input").fill("太长了" * 1000)
    page.get_by_test_id("send").click()
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("8192")
    expect(page.get_by_test_id("input")).to_be_enabled()
    expect(page.get_by_test_id("assistant-message")).to_have_count(0)

    # Markup typed by a customer is shown as text, and the next question is answered.
    answer = ask(page, "<b>hello</b> " + FAQ_EN)
    expect(page.get_by_test_id("user-message").last).to_have_text("<b>hello</b> " + FAQ_EN)
    assert page.locator('[data-testid="user-message"] b').count() == 0
    assert answer.text_content().strip() != ""
