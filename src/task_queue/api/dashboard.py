"""GET /: the web dashboard, one static page that reads and steers the queue through the API.

The page is served open, like /docs; every call it makes goes to /api/v1 with the
API key typed into it, so it shows nothing the key does not allow. Its script
and style are inline and allowed by hash in the Content-Security-Policy: markup
that a task's payload or error smuggled into the page could not run, and the
page itself puts API data on screen only as text.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from fastapi import APIRouter
from starlette.responses import HTMLResponse

PAGE = (resources.files("task_queue.api") / "dashboard.html").read_text()


def _allowed(tag: str) -> str:
    """The CSP source that allows the page's one inline <tag> element, by its hash."""
    found = re.search(rf"<{tag}>(.*?)</{tag}>", PAGE, re.DOTALL)
    if found is None:
        raise RuntimeError(f"dashboard.html has no <{tag}>")
    digest = hashlib.sha256(found.group(1).encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


POLICY = "; ".join(
    [
        "default-src 'none'",
        f"script-src {_allowed('script')}",
        f"style-src {_allowed('style')}",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=HEADERS)
