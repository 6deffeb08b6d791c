"""What every request and response of the gallery passes: allowed host names, same-origin
writes, a login where the gallery is served beyond loopback, and the security headers.

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

* **Login** (who may see the photos): a gallery bound beyond loopback asks every request for
  its :class:`Secret` (a token printed at start, or a password file's), whatever its source
  address (a reverse proxy on the same machine connects from loopback). The first visit gives
  it as ``?token=...`` or in the form at ``/login``; then an HttpOnly, SameSite=Strict cookie
  holds a random session key (never the secret). Secrets and keys are compared in constant
  time; each wrong secret locks its client out for a while (1 s, doubled each time, at most
  60 s; the newest 4,096 clients remembered), answered 429. A cookie sent with a cross-site
  signal (``Sec-Fetch-Site: cross-site``, a foreign Origin) does not count. Bound to loopback,
  nothing is asked (unless a secret is given).

>>> app = HostAndOrigin(app, AllowedHosts(["gallery.lan"]), respond=error_response)
>>> app = LoginRequired(app, Login(Secret.generate()), page=login_page, respond=error_response)
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import secrets
import time
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
from starlette.responses import RedirectResponse, Response

from ..errors import ArgumentError

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
        return same_origin_write(headers, _here(scope, name, port))


def same_origin_write(headers: dict[str, str], here: tuple[str, str, int | None]) -> tuple[int, str] | None:
    """``None`` when a write's lower-cased ``headers`` show it comes from the origin ``here``
    (scheme, host, port), else (403, the reason): see the module's docstring."""
    same = False  # the Origin decides when there is one; else the Referer
    for header in ("origin", "referer"):
        value = headers.get(header)
        if value is None:
            continue
        if _origin(value) != here:
            shown = value if len(value) <= 80 else value[:80] + "..."
            return 403, (f"cross-site request refused: its {header.title()} {shown!r} is not this gallery "
                         f"({_url(here)}); send it from the gallery's own pages")
        same = True
        break
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    if fetch_site == "cross-site":
        return 403, ("cross-site request refused: its Sec-Fetch-Site is cross-site; send it from the gallery's "
                     f"own pages ({_url(here)})")
    if same or fetch_site == "same-origin":
        return None
    return 403, ("request refused: a write must say it comes from this gallery, and this one has neither Origin, "
                 f"Referer nor Sec-Fetch-Site: same-origin; send it from the gallery's own pages, or (a script) "
                 f"with the header Origin: {_url(here)}")


def _here(scope, name: str, port: int | None) -> tuple[str, str, int | None]:
    """The origin (scheme, host, port) a request was sent to, from its Host's name and port."""
    scheme = scope.get("scheme", "http")
    return scheme, _name(name), port or _DEFAULT_PORTS.get(scheme)


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


# --------------------------------------------------------------------------- login

#: The login form's path; it and the package's static files are served without the secret.
LOGIN_PATH = "/login"
OPEN_PREFIXES = ("/static/",)
#: Seconds a client is locked out after its first wrong secret, doubled for each further one up
#: to :data:`LOGIN_MAX_DELAY`; at most :data:`LOGIN_CLIENTS` clients are remembered.
LOGIN_DELAY = 1.0
LOGIN_MAX_DELAY = 60.0
LOGIN_CLIENTS = 4096
#: How long a browser keeps its session cookie, in seconds (a restart of the server ends it).
SESSION_AGE = 30 * 24 * 3600
#: The shortest secret a password file may hold.
MIN_SECRET = 8
_MAX_FORM = 4096
#: Seconds a client has to send the login form's body.
LOGIN_BODY_TIMEOUT = 10.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches only this machine."""
    name = _name(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Secret:
    """What a gallery served beyond loopback asks for: a random token (:meth:`generate`, printed
    at start) or the first line of a password file (:meth:`from_file`). Only its sha256 is kept
    for comparing (:meth:`matches`, in constant time whatever the lengths).

    >>> secret = Secret.generate(); secret.matches(secret.token)
    True
    """

    def __init__(self, value: str, *, token: bool = False, source: str | None = None):
        value = value.strip()
        if len(value) < MIN_SECRET:
            raise ArgumentError(f"a gallery's secret needs at least {MIN_SECRET} characters, got {len(value)}",
                                param="secret")
        self._digest = hashlib.sha256(value.encode()).digest()
        #: The token to print (a made one only: a password is never shown), and the file it came from.
        self.token = value if token else None
        self.source = source

    @classmethod
    def generate(cls) -> "Secret":
        return cls(secrets.token_urlsafe(24), token=True)

    @classmethod
    def from_file(cls, path: str | Path) -> "Secret":
        """The first line of the file at ``path``; an :class:`ArgumentError` naming
        ``password_file`` when it cannot be read or is too short."""
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise ArgumentError(f"cannot read the `password_file` {str(path)!r}: {reason}", param="password_file") from None
        first = lines[0].strip() if lines else ""
        if len(first) < MIN_SECRET:
            raise ArgumentError(f"the `password_file` {str(path)!r} must hold a password of at least {MIN_SECRET} "
                                f"characters on its first line", param="password_file")
        return cls(first, source=str(path))

    def matches(self, given: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest(), self._digest)


class Login:
    """Whether a gallery asks for a secret, and what it remembers: the :class:`Secret` (None:
    nothing asked; :meth:`require` sets it), the session key its cookies hold (random, made at
    start), and each client's wrong secrets (a bounded table). Used on the event loop only."""

    def __init__(self, secret: Secret | None = None, *, delay: float = LOGIN_DELAY,
                 max_delay: float = LOGIN_MAX_DELAY, clients: int = LOGIN_CLIENTS):
        self.secret = secret
        self.session = secrets.token_urlsafe(32)
        self.delay, self.max_delay, self.clients = delay, max_delay, clients
        self._failures: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()

    @property
    def required(self) -> bool:
        return self.secret is not None

    def require(self, secret: Secret | str) -> None:
        self.secret = secret if isinstance(secret, Secret) else Secret(secret)

    def session_ok(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode("utf-8", "replace"), self.session.encode())

    def wait(self, client: str) -> float:
        """Seconds before ``client`` may try a secret again (0: now)."""
        _, until = self._failures.get(client, (0, 0.0))
        return max(0.0, until - time.monotonic())

    def attempt(self, client: str, given: str) -> bool:
        """Whether ``given`` is the secret; a wrong one locks ``client`` out for longer each time."""
        if self.secret.matches(given):
            self._failures.pop(client, None)
            return True
        count = self._failures.pop(client, (0, 0.0))[0] + 1
        self._failures[client] = (count, time.monotonic() + min(self.delay * 2 ** (count - 1), self.max_delay))
        while len(self._failures) > self.clients:
            self._failures.popitem(last=False)
        return False


Page = Callable[..., Response]


class LoginRequired:
    """ASGI middleware asking for the :class:`Login`'s secret when it has one (see the module's
    docstring); ``page(status=..., error=..., next=...)`` renders the login form and
    ``respond(scope, status, reason)`` any other refusal (JSON under ``/api``)."""

    def __init__(self, app, login: Login, page: Page, respond: Respond):
        self.app = app
        self.login = login
        self.page = page
        self.respond = respond

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.login.required or scope["path"].startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        signed_in = self.login.session_ok(_cookies(headers).get(_cookie_name(scope))) and not _cross_site(scope, headers)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        method = scope.get("method", "GET").upper()
        if scope["path"] == LOGIN_PATH:
            response = await self._login_page(scope, receive, method, query, signed_in)
        elif "token" in query and method in ("GET", "HEAD"):
            rest = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")) if k != "token"]
            target = scope["path"] + ("?" + urlencode(rest) if rest else "")
            wrong = "that is not this gallery's token; give the one `convscope serve` printed"
            response = self._try(scope, query["token"], target) or (
                self.respond(scope, 401, wrong) if scope["path"].startswith("/api") else
                self.page(status=401, error=wrong, next=target))
        elif signed_in:
            return await self.app(scope, receive, send)
        elif method in ("GET", "HEAD") and not scope["path"].startswith("/api"):
            target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
            response = RedirectResponse(LOGIN_PATH + "?" + urlencode({"next": target}), status_code=303)
        else:
            response = self.respond(scope, 401, "this gallery asks for its secret: sign in at /login (or open the "
                                                "URL with ?token=... that `convscope serve` printed)")
        await response(scope, receive, send)

    async def _login_page(self, scope, receive, method: str, query: dict, signed_in: bool) -> Response:
        target = _local(query.get("next", "/"))
        if method in ("GET", "HEAD"):
            return RedirectResponse(target, status_code=303) if signed_in else self.page(status=200, next=target)
        if method != "POST":
            return self.respond(scope, 405, "this URL does not accept that method")
        body = b""
        with anyio.move_on_after(LOGIN_BODY_TIMEOUT) as late:
            while True:
                message = await receive()
                body += message.get("body", b"")
                if len(body) > _MAX_FORM:
                    return self.respond(scope, 413, "the login form is too large")
                if not message.get("more_body"):
                    break
        if late.cancel_called:
            return self.respond(scope, 408, f"the login form did not arrive within {LOGIN_BODY_TIMEOUT:g} s")
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        target = _local(form.get("next", target))
        return self._try(scope, form.get("secret", ""), target) or self.page(
            status=401, error="that is not this gallery's secret", next=target)

    def _try(self, scope, given: str, target: str) -> Response | None:
        """The answer to a secret given: a redirect to ``target`` setting the cookie, a 429 while
        the client is locked out, or None for a wrong one."""
        client = (scope.get("client") or ("unknown",))[0]
        wait = self.login.wait(client)
        if wait > 0:
            seconds = max(1, round(wait + 0.5))
            response = self.page(status=429, next=target,
                                 error=f"too many wrong secrets from {client}; try again in {seconds} s")
            response.headers["Retry-After"] = str(seconds)
            return response
        if not self.login.attempt(client, given):
            return None
        response = RedirectResponse(_local(target), status_code=303)
        response.set_cookie(_cookie_name(scope), self.login.session, max_age=SESSION_AGE, path="/", httponly=True,
                            samesite="strict", secure=scope.get("scheme") == "https")
        return response


def _cookie_name(scope) -> str:
    """One cookie per server port: browsers share a host's cookies between its ports."""
    return f"convscope-{(scope.get('server') or ('', 0))[1] or 0}"


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    out = {}
    for part in headers.get("cookie", "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            out.setdefault(key, value)
    return out


def _cross_site(scope, headers: dict[str, str]) -> bool:
    """Whether a request says it comes from another site (a cookie sent with it does not count)."""
    if headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    try:
        name, port = split_host(headers.get("host", ""))
    except ValueError:
        return True
    return _origin(origin) != _here(scope, name, port)


def _local(target: str) -> str:
    """``target`` when it is a path of this server (never another host: no ``//`` or ``\\``)."""
    if not target.startswith("/") or target.startswith(("//", "/\\")) or any(c in target for c in "\r\n"):
        return "/"
    return target
