"""The web chat page at `/`: static files, with the assistant's name and greetings filled in."""

from __future__ import annotations

import html
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from kefu.assistant.pipeline import Assistant

router = APIRouter()
STATIC = resources.files("kefu.serve") / "static"


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page(request: Request) -> HTMLResponse:
    return HTMLResponse(request.app.state.page, headers={"Cache-Control": "no-cache"})


def filled_page(assistant: Assistant) -> str:
    """index.html with the assistant's name and greetings, HTML-escaped (filled at start-up)."""
    filled = {
        "assistant_name": assistant.config.assistant.name,
        "greeting_en": assistant.greeting("en"),
        "greeting_zh": assistant.greeting("zh"),
        "model": assistant.name,
    }
    text = (STATIC / "index.html").read_text(encoding="utf-8")
    for key, value in filled.items():
        text = text.replace("{{" + key + "}}", html.escape(value))
    return text
