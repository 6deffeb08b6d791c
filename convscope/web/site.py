"""What a group of gallery pages gets from the app, and what it gives back.

The app (:func:`convscope.web.app.create_app`) owns what every page shares: the page renderer
(templates, URLs, the header with its links and search box), the worker threads, and the error
pages. A *page group* is one thing the server shows beside the atlas (an index's search pages,
an evolve run, a model's health): an object made with the :class:`Site` that gives back its
routes, its links for the header and its ``/api`` entries (:class:`PageGroup`). The app makes
the index's group itself (``create_app(index=...)``); any other comes in as a factory,
``create_app(..., pages=[lambda site: EvolvePages(site, "evolve/")])``.

>>> site = Site(page=page, workers=workers)
>>> group = SearchPages(site, index, model=load_index_model)   # convscope.web.search_pages
>>> routes += group.routes()
>>> site.nav += group.nav
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Protocol, Sequence

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import ConvscopeError, ImageError
from .workers import Workers

TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Method not allowed", 408: "Too slow",
          413: "Too large", 421: "Wrong host", 503: "Unavailable"}


@dataclasses.dataclass(frozen=True)
class NavLink:
    """A link in the header of every page: ``label`` and ``url``."""

    label: str
    url: str


@dataclasses.dataclass
class Site:
    """What the app shares with its page groups.

    ``page(template, status=200, **data)`` renders a template of ``web/templates`` (which
    extends ``base.html``) into an HTML response, with the header filled in; ``workers`` runs
    heavy work (:class:`~convscope.web.workers.Workers`: decode threads and the one model
    thread). The header shows ``nav`` (every group's links), a search box posting to
    ``search`` (the URL of a group's search page, or None for no box), and an upload link when
    ``uploads``; ``home_label`` names what ``/`` shows ("the atlas", "search"). ``model``:
    a loader of the atlas's model (the upload analyzer's, loaded on first call: one copy for
    every group that needs it), or None without an atlas; ``fill``: whether unit pages may ask
    for their missing pictures (:mod:`convscope.web.fill_pages`).
    """

    page: Callable[..., Response]
    workers: Workers
    nav: list[NavLink] = dataclasses.field(default_factory=list)
    search: str | None = None
    uploads: bool = True
    home_label: str = "the atlas"
    model: Callable | None = None
    fill: bool = False


class PageGroup(Protocol):
    """A group of pages the app serves beside (or instead of) the atlas's.

    ``routes()``: its Starlette routes (pages, ``/api/...`` JSON twins, files); ``nav``: its
    links in the header; ``api``: name -> URL pattern entries for ``/api``; ``search``: the URL
    of its search page, if the header's search box should go there (else None); ``home``: the
    endpoint ``/`` shows when the server has no atlas (else None).
    """

    nav: Sequence[NavLink]
    api: Mapping[str, str]
    search: str | None
    home: Callable | None

    def routes(self) -> list[BaseRoute]: ...


class Unavailable(ConvscopeError, LookupError):
    """A page the server has no data for (an atlas page on a server started with an index
    only, say); the message says why."""

    status = 404


def unavailable(paths: Sequence[str], reason: str) -> list[Route]:
    """Routes answering every method on ``paths`` with 404 and ``reason``: the pages of
    something this server was not given say so in one line instead of "no such page"."""

    async def endpoint(request):
        raise Unavailable(reason)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return [Route(p, endpoint, methods=methods) for p in paths]


def error_status(exc: Exception) -> tuple[int, str]:
    """The HTTP status and one-line reason for an exception raised while serving a request."""
    if isinstance(exc, HTTPException):
        reasons = {404: "no such page; start from / or see /api", 405: "this URL does not accept that method"}
        generic = not exc.detail or exc.detail in ("Not Found", "Method Not Allowed")
        return exc.status_code, reasons.get(exc.status_code, str(exc.detail)) if generic else exc.detail
    if isinstance(exc, ImageError):
        too_big = "too large" in exc.reason
        return (413 if too_big else 400), f"not a usable image: {exc.reason}"
    status = getattr(exc, "status", None)
    if isinstance(exc, ConvscopeError):
        return (status or 400), str(exc)
    if isinstance(exc, ValueError):
        return 400, str(exc).splitlines()[0] if str(exc) else "bad request"
    return 500, "internal error; the server log has the details"
