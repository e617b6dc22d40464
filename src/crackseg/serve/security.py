"""Who may use the web service, and how much they may send.

Requests are answered only under the names the server listens on, and POSTs only from its own page
(`HostOriginGuard`): another site's page can neither post to it nor, through DNS rebinding, read its answers.
Request bodies over the upload limit are refused before they are read whole (`BodySizeLimit`), and an upload
that stops sending is dropped (`BodyTimeout`) instead of holding a connection and its buffers for ever.
"""

from __future__ import annotations

import ipaddress
import re
import socket

import anyio
from fastapi import HTTPException
from fastapi.responses import JSONResponse


class BodySizeLimit:
    """Answers 413 to request bodies over `max_bytes`: at once from Content-Length, or as soon as a streamed
    body passes the limit, so an oversized upload is never read whole."""

    def __init__(self, app, max_bytes: int, message: str):
        self.app, self.max_bytes, self.message = app, max_bytes, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            status, detail = (413, self.message) if length.isdigit() else (400, "invalid Content-Length header")
            return await JSONResponse({"detail": detail}, status)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self.message)  # FastAPI passes HTTPExceptions from body parsing on
            return message

        await self.app(scope, limited_receive, send)


class BodyTimeout:
    """Answers 408 (and closes the connection) when a request body pauses for longer than `seconds`: a client
    that sent its headers and part of an upload, then stalled. The pause is measured between two pieces of the
    body, as a web server's client-body timeout is, so a slow link that keeps sending is never cut off."""

    def __init__(self, app, seconds: float):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_done = False

        async def receive_in_time():
            nonlocal body_done
            if body_done:  # after the body, receive() waits for a disconnect, which may take as long as it likes
                return await receive()
            try:
                with anyio.fail_after(self.seconds):
                    message = await receive()
            except TimeoutError:
                detail = f"the upload stalled: nothing received for {self.seconds:g} s; send it again"
                raise HTTPException(408, detail, {"Connection": "close"}) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_in_time, send)


# Where the page may be used from. A browser sends the name it connected to in the Host header (with the port
# when it is not the scheme's default) and, with every POST, the page's origin in the Origin header. A Host
# the server was not started for is a DNS-rebinding page (an attacker's name pointed at this machine) reading
# the answers; an Origin of another site is a page posting in the user's name: both are refused. Clients that
# are not browsers (curl, scripts) send no Origin and are not affected.

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
DEFAULT_PORTS = {"http": 80, "https": 443}
HOST_PORT = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::(\d{1,5}))?")
ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://" + HOST_PORT.pattern)


def host_name(name: str) -> str:
    """A host name or address as compared here: lower case, IPv6 without brackets, no trailing dot."""
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name.rstrip(".") if name not in WILDCARD_HOSTS else name


def allowed_host_names(host: str) -> frozenset[str]:
    """The names a server bound to `host` (its --host) answers to: the loopback names, and `host` itself, or
    for a wildcard bind (0.0.0.0, ::) this machine's name. Requests are also accepted for the address they
    actually arrived at (see `HostOriginGuard`), which covers every interface's address on a wildcard bind."""
    host = host_name(host)
    names = set(LOOPBACK_NAMES)
    if host in WILDCARD_HOSTS:
        machine = host_name(socket.gethostname())
        names.update(filter(None, (machine, f"{machine}.local" if machine and "." not in machine else "")))
    else:
        names.add(host)
    return frozenset(names)


def split_host_port(value: str, pattern: re.Pattern = HOST_PORT) -> tuple[str, ...] | None:
    """The parts of a Host header (name, port) or an Origin (scheme, name, port), port "" when absent;
    None when malformed (userinfo, a path, spaces, an unbracketed IPv6 address, a port past 65535)."""
    match = pattern.fullmatch(value.strip().lower())
    if match is None:
        return None
    *scheme, name, port = match.groups()
    if port and int(port) > 65535:
        return None
    return (*scheme, host_name(name), port or "")


class HostOriginGuard:
    """Answers 400 to a request whose Host header names neither one of `allowed` nor the address the
    connection arrived at (an IP address, which a DNS-rebinding page cannot make a browser send), and 403 to a
    POST/PUT/PATCH/DELETE whose Origin header is present but is not `http://<such a name>:<the port in Host>`.
    The port is the one the browser connected to, which is the listening port unless a proxy or a container's
    port mapping is in between."""

    def __init__(self, app, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in (b"host", b"origin")}
        allowed = self.allowed
        server = scope.get("server")
        if server and server[0]:
            allowed = allowed | {host_name(str(server[0]))}  # an IP address when served by uvicorn
        scheme = scope.get("scheme", "http")
        host = split_host_port(headers.get("host", ""))
        if host is None or host[0] not in allowed:
            shown = headers.get("host", "")[:100]
            detail = (
                f"host {shown!r} not allowed: this server answers to {', '.join(sorted(self.allowed))} "
                "(start it with --host NAME to be reached under another name)"
            )
            return await JSONResponse({"detail": detail}, 400)(scope, receive, send)
        port = int(host[1] or DEFAULT_PORTS.get(scheme, 0))
        origin = headers.get("origin")
        if origin is not None and scope.get("method") in UNSAFE_METHODS:
            parts = split_host_port(origin, ORIGIN)
            same_site = (
                parts is not None
                and parts[0] == scheme
                and parts[1] in allowed
                and int(parts[2] or DEFAULT_PORTS.get(parts[0], 0)) == port
            )
            if not same_site:
                detail = f"cross-origin request from {origin[:100]!r} refused: use the page this server serves"
                return await JSONResponse({"detail": detail}, 403)(scope, receive, send)
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address
