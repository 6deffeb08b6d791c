"""Running the gallery app on uvicorn with deadlines, a connection cap and memory that comes back.

uvicorn (0.3x to 0.5x, its h11 protocol) starts no timer on a new connection and stops its
keep-alive timer on every byte received, so a client sending its request head a byte a second
holds its connection for ever (measured: 100 such connections were still open after 60 s).
:class:`DeadlineProtocol` gives every request head a deadline, from the moment the connection
opens or the previous response ends: a client that has not sent a whole head by then gets 408
(or, if it sent nothing, a plain close). The app itself gives upload bodies their deadline
(``create_app(body_timeout=...)``), and ``limit_concurrency`` caps connections plus requests
in flight, answering 503 beyond.

Memory: the server keeps :func:`convscope.runtime.keep_freed_memory` on (a burst of uploads
reuses freed blocks instead of page-faulting them in again) and the app trims its heaps after
each decode and whenever its uploads go idle (:mod:`convscope.web.workers`).

Beyond loopback the app asks every request for a secret (:mod:`convscope.web.security`):

>>> serve(create_app("atlas/"), host="127.0.0.1", port=8000)     # doctest: +SKIP
>>> serve(create_app("atlas/"), host="0.0.0.0", secret=Secret.generate())   # doctest: +SKIP
"""
from __future__ import annotations

import copy
import functools

from ..errors import ArgumentError
from .security import is_loopback

#: Seconds a client has to send a whole request head (line and headers).
HEADER_TIMEOUT = 10.0
#: Most connections plus requests in flight at once; uvicorn answers 503 beyond.
LIMIT_CONCURRENCY = 256
#: Seconds an idle keep-alive connection is kept.
KEEP_ALIVE = 5
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


def _protocol_class():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineProtocol(H11Protocol):
        """uvicorn's h11 protocol with a deadline on each request head (``header_timeout`` s)."""

        def __init__(self, *args, header_timeout: float = HEADER_TIMEOUT, **kwargs):
            super().__init__(*args, **kwargs)
            self.header_timeout = header_timeout
            self._head_timer = None
            self._head_bytes = 0

        def _arm(self) -> None:
            self._disarm()
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            self._head_bytes += len(data)
            super().data_received(data)
            if self.cycle is not cycle:  # a whole request head arrived: its app now runs
                self._disarm()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            super().on_response_complete()
            # the next head's deadline starts now, unless a pipelined request already began
            if self.cycle is cycle and not self.transport.is_closing():
                self._arm()

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self._head_bytes:
                text = f"the request head was not complete within {self.header_timeout:g} s".encode()
                self.transport.write(_TIMEOUT_RESPONSE % (len(text), text))
            self.transport.close()

    return DeadlineProtocol


#: uvicorn's own log format, with the gallery's logger (``convscope.web``: one line per aborted
#: upload) beside uvicorn's.
def log_config(level: str = "info") -> dict:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["convscope.web"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def server_config(app, host: str = "127.0.0.1", port: int = 8000, *, header_timeout: float = HEADER_TIMEOUT,
                  limit_concurrency: int = LIMIT_CONCURRENCY, log_level: str = "warning", access_log: bool = False,
                  secret=None):
    """The :class:`uvicorn.Config` that :func:`serve` runs (for a server in a thread, as tests do).

    ``header_timeout``: seconds a client has to send a request head; ``limit_concurrency``:
    most connections plus requests in flight (503 beyond). ``host`` is added to the app's
    allowed host names unless it is a wildcard address (0.0.0.0, ::). ``secret`` (a
    :class:`~convscope.web.security.Secret`): every request must give it; a ``host`` beyond
    loopback needs one (here or given to ``create_app``), else :class:`ArgumentError`.
    """
    import uvicorn

    login = getattr(getattr(app, "state", None), "login", None)
    if secret is not None:
        if login is None:
            raise ArgumentError("this app cannot ask for a `secret`: make it with convscope.web.create_app", param="secret")
        login.require(secret)
    if not is_loopback(host) and (login is None or not login.required):
        raise ArgumentError(f"a gallery served beyond loopback (`host` {host!r}) asks for a secret: give `secret` "
                            "(Secret.generate(), whose token you hand out, or Secret.from_file(PATH))", param="secret")
    if header_timeout <= 0:
        raise ValueError(f"header_timeout must be a positive number of seconds, got {header_timeout}")
    if limit_concurrency < 1:
        raise ValueError(f"limit_concurrency must be at least 1, got {limit_concurrency}")
    allowed = getattr(getattr(app, "state", None), "allowed_hosts", None)
    if allowed is not None and host not in ("0.0.0.0", "::", ""):
        allowed.allow(host)
    return uvicorn.Config(
        app, host=host, port=port, http=functools.partial(_protocol_class(), header_timeout=header_timeout),
        limit_concurrency=limit_concurrency, timeout_keep_alive=KEEP_ALIVE, log_level=log_level,
        access_log=access_log, log_config=log_config("info"),
    )


def serve(app, host: str = "127.0.0.1", port: int = 8000, *, header_timeout: float = HEADER_TIMEOUT,
          limit_concurrency: int = LIMIT_CONCURRENCY, log_level: str = "warning", secret=None) -> None:
    """Run ``app`` (from :func:`~convscope.web.create_app`) on uvicorn until Ctrl+C, as a server
    should: request heads get ``header_timeout`` seconds, at most ``limit_concurrency``
    connections and requests are served at once (503 beyond), and uvicorn's log lines and the
    app's (one per aborted upload) go to stderr. Beyond loopback every request must give
    ``secret`` (see :func:`server_config`)."""
    import uvicorn

    from ..runtime import keep_freed_memory

    keep_freed_memory()  # whoever started the process: the app gives the memory back (see above)
    config = server_config(app, host, port, header_timeout=header_timeout, limit_concurrency=limit_concurrency,
                           log_level=log_level, secret=secret)
    uvicorn.Server(config).run()

