"""Who may use a server, and the headers every answer carries.

* **Token.** With a token, every request (page, assets, API) must carry it: ``?token=`` in the
  URL (the link the server prints), an ``X-Sidraw-Token`` or ``Authorization: Bearer`` header
  (scripts), or the cookie the page gets when it is opened with the token in its URL (so that
  its assets, downloads and API calls need no token in their URLs). The cookie is ``HttpOnly``
  and ``SameSite=Strict``: another site's page cannot make the browser send it.
* **Host.** A server on a loopback address answers only requests addressed to a loopback name
  (``127.0.0.1``, ``localhost``, ``[::1]``), so a web page that rebinds its own domain name to
  127.0.0.1 (DNS rebinding) cannot read it.
* **Headers.** A content security policy that allows only the server's own scripts, styles and
  images (the page loads nothing from elsewhere), no MIME sniffing, no referrer (the token is in
  the page's URL), no framing, and no caching of API answers.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES: tuple[str, ...] = ("127.0.0.1", "localhost", "::1", "[::1]")

_HEADERS: dict[str, str] = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' blob: data:; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def allowed_hosts(host: str, loopback: bool) -> Sequence[str]:
    """The Host names a server on ``host`` answers to (``*``: any, beyond loopback)."""
    return (*LOOPBACK_NAMES, host.lower()) if loopback else ("*",)


def cookie_name(scope: Scope) -> str:
    """The token's cookie, one per port (cookies are shared by every port of a host)."""
    server = scope.get("server") or ("", 0)
    return f"sidraw_token_{server[1] or 0}"


def given_token(conn: HTTPConnection) -> tuple[str | None, bool]:
    """The token a request carries, and whether it came in the URL."""
    if token := conn.query_params.get("token"):
        return token, True
    header = conn.headers.get("x-sidraw-token")
    auth = conn.headers.get("authorization", "")
    if not header and auth.lower().startswith("bearer "):
        header = auth[7:].strip()
    return header or conn.cookies.get(cookie_name(conn.scope)), False


class Guard:
    """ASGI middleware: the token check and the headers of every answer.

    Args:
        app: the application.
        token: the secret, or None (every request is let through).
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        given, in_url = given_token(conn)
        if self.token is not None and not (
            given and secrets.compare_digest(given.encode(), self.token.encode())
        ):
            message = "this sidraw server needs its token: open the link it printed (?token=...)"
            await JSONResponse({"error": message}, status_code=401)(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")
        set_cookie = self.token is not None and in_url

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in _HEADERS.items():
                    headers.setdefault(key, value)
                if api:
                    headers.setdefault("cache-control", "no-store")
                if set_cookie:
                    headers.append(
                        "set-cookie",
                        f"{cookie_name(scope)}={self.token}; Path=/; HttpOnly; SameSite=Strict",
                    )
            await send(message)

        await self.app(scope, receive, send_with_headers)
