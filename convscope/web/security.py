"""What every request and response of the gallery passes: allowed host names, same-origin
writes, and the security headers.

* **Host** (DNS rebinding): a page on ``evil.example.com`` whose name is made to resolve to
  127.0.0.1 reaches a local server with ``Host: evil.example.com``. Only the names the server
  was started for are answered: the loopback names, the address the connection came in on (an
  address, unlike a name, cannot be rebound), and the names in ``allowed_hosts``. Others get
  421 and a reason.
* **Origin** (cross-site writes): a request that changes state (POST, PUT, PATCH, DELETE) must
  show that it comes from a page of this very server: its ``Origin``, or its ``Referer`` where
  it sends no Origin, names the scheme, host and port the request was sent to, or (with
  neither) its ``Sec-Fetch-Site`` says ``same-origin``. ``Sec-Fetch-Site: cross-site`` is
  refused whatever else the request says, and so is a write with no such signal at all (a
  browser's pages send Origin with every POST; a script sends ``Origin: http://HOST:PORT``,
  the gallery's own address). Others get 403 and a reason.

>>> app = HostAndOrigin(app, AllowedHosts(["gallery.lan"]), respond=error_response)
"""
from __future__ import annotations

import ipaddress
from typing import Callable, Iterable
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Methods that only read: no Origin check for them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # not "no-referrer": under it a browser sends "Origin: null" with the gallery's own form posts
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(value: str) -> tuple[str, int | None]:
    """A Host header (or the host part of a URL) -> (lower-case name without brackets, port or
    ``None``); ``ValueError`` when it is malformed."""
    value = value.strip()
    if not value or any(c.isspace() or c in "/\\@?#" for c in value):
        raise ValueError(f"malformed host {value[:80]!r}")
    parts = urlsplit("//" + value)
    port = parts.port  # ValueError for a port that is not a number in range
    name = (parts.hostname or "").rstrip(".")
    if not name:
        raise ValueError(f"malformed host {value[:80]!r}")
    return name, port


def _name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.rstrip(".")


class AllowedHosts:
    """The host names a server answers to: :data:`LOOPBACK_HOSTS`, the address each connection
    came in on, and ``extra`` (names or addresses, any port; ``"*"`` allows every name, for a
    server behind a proxy that checks names itself). :meth:`allow` adds one, such as the host a
    server is bound to."""

    def __init__(self, extra: Iterable[str] = ()):
        self.names: set[str] = {_name(h) for h in LOOPBACK_HOSTS}
        self.any = False
        for host in extra:
            self.allow(host)

    def allow(self, host: str) -> None:
        if host.strip() == "*":
            self.any = True
        elif host.strip():
            self.names.add(_name(host))

    def __contains__(self, name: str) -> bool:
        return self.any or _name(name) in self.names

    def __iter__(self):
        return iter(sorted(self.names))


Respond = Callable[[dict, int, str], Callable]


class HostAndOrigin:
    """ASGI middleware refusing foreign Host headers (421) and cross-origin writes (403), each
    with a one-line reason; ``respond(scope, status, reason)`` makes the response (an ASGI app),
    so the refusal looks like any other error of the gallery."""

    def __init__(self, app, allowed: AllowedHosts, respond: Respond):
        self.app = app
        self.allowed = allowed
        self.respond = respond

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.check(scope)
        if refusal is None:
            return await self.app(scope, receive, send)
        status, reason = refusal
        response = self.respond(scope, status, reason)
        await response(scope, receive, send)

    def check(self, scope) -> tuple[int, str] | None:
        """``None`` for a request to let through, else (status, reason)."""
        headers = _headers(scope)
        host = headers.get("host")
        if host is None:  # HTTP/1.0 without Host: what the socket was connected to
            server = scope.get("server") or ("", None)
            name, port = str(server[0]), server[1]
        else:
            try:
                name, port = split_host(host)
            except ValueError as exc:
                return 400, f"bad Host header: {exc}"
        local = (scope.get("server") or ("",))[0]
        if name not in self.allowed and _name(name) != _name(str(local)):
            shown = ", ".join(self.allowed)
            return 421, (f"this gallery does not answer to the host name {name[:80]!r} (it answers to {shown} and "
                         "its own address; a server made with allowed_hosts answers to more)")
        if scope.get("method", "GET").upper() in SAFE_METHODS:
            return None
        scheme = scope.get("scheme", "http")
        here = (scheme, _name(name), port or _DEFAULT_PORTS.get(scheme))
        return same_origin_write(headers, here)


def same_origin_write(headers: dict[str, str], here: tuple[str, str, int | None]) -> tuple[int, str] | None:
    """``None`` when a write's lower-cased ``headers`` show it comes from the origin ``here``
    (scheme, host, port), else (403, the reason): see the module's docstring."""
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    if fetch_site == "cross-site":
        return 403, ("cross-site request refused: its Sec-Fetch-Site is cross-site; send it from the gallery's "
                     f"own pages ({_url(here)})")
    for header in ("origin", "referer"):
        value = headers.get(header)
        if value is None:
            continue
        if _origin(value) != here:
            shown = value if len(value) <= 80 else value[:80] + "..."
            return 403, (f"cross-site request refused: its {header.title()} {shown!r} is not this gallery "
                         f"({_url(here)}); send it from the gallery's own pages")
        return None  # the Origin decides when there is one; else the Referer
    if fetch_site == "same-origin":
        return None
    return 403, ("request refused: a write must say it comes from this gallery, and this one has neither Origin, "
                 f"Referer nor Sec-Fetch-Site: same-origin; send it from the gallery's own pages, or (a script) "
                 f"with the header Origin: {_url(here)}")


def _headers(scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        out.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return out


def _origin(value: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an Origin or Referer value; ``None`` for "null" or a malformed one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, _name(parts.hostname), port or _DEFAULT_PORTS[parts.scheme]


def _url(origin: tuple[str, str, int | None]) -> str:
    scheme, name, port = origin
    host = f"[{name}]" if ":" in name else name
    return f"{scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS.get(scheme)) else f":{port}")


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response that lacks them."""

    def __init__(self, app):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in self.headers if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)
