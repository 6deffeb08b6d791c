"""What a group of gallery pages gets from the app, and what it gives back.

The app (:func:`convscope.web.app.create_app`) owns what every page shares: the page renderer
(templates, URLs, the header with its links and search box), the worker threads, and the error
pages. Every page the server shows is in a *page group*: the atlas's pages, the uploads, the
fill endpoint, an index's search pages, an evolve run, a model's health. A group is an object
made with the :class:`Site` that gives back its routes, its links for the header, its ``/api``
entries, the page ``/`` shows if it has one, and what a server without it answers on its paths
(:class:`PageGroup`). The app makes the groups of what it is given (``create_app(atlas,
index=...)``); any other comes in as a factory, ``create_app(..., pages=[lambda site:
EvolvePages(site, "evolve/")])``, and all are wired alike.

>>> site = Site(page=page, workers=workers)
>>> group = SearchPages(site, index)   # convscope.web.search_pages
>>> routes += group.routes()
>>> site.nav += group.nav
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Mapping, Protocol, Sequence

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .common import Unavailable
from .render import Links
from .workers import Workers


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
    every group that needs it), or None without an atlas, and ``model_record`` the model the
    atlas records (its ``info()["model"]``); ``fill``: whether unit pages may ask for their
    missing pictures (:mod:`convscope.web.fill_pages`). ``links``: the URLs of every page
    (:class:`~convscope.web.render.Links`, the one URL helper).
    """

    page: Callable[..., Response]
    workers: Workers
    links: Links = dataclasses.field(default_factory=Links)
    nav: list[NavLink] = dataclasses.field(default_factory=list)
    search: str | None = None
    uploads: bool = True
    home_label: str = "the atlas"
    model: Callable | None = None
    model_record: dict | None = None
    fill: bool = False


class PageGroup(Protocol):
    """A group of pages the app serves beside (or instead of) the atlas's.

    ``routes()``: its Starlette routes (pages, ``/api/...`` JSON twins, files); ``nav``: its
    links in the header; ``api``: name -> URL pattern entries for ``/api``; ``search``: the URL
    of its search page, if the header's search box should go there (else None); ``home``: the
    endpoint ``/`` shows (the first group's that has one), else None; ``absent`` (a class
    attribute): what a server without this group answers on its paths (:class:`Absent`), or
    None.
    """

    nav: Sequence[NavLink]
    api: Mapping[str, str]
    search: str | None
    home: Callable | None
    absent: ClassVar[Absent | None]

    def routes(self) -> list[BaseRoute]: ...


@dataclasses.dataclass(frozen=True)
class Absent:
    """What a server without a group answers on the group's ``paths`` (every method): 404 with
    ``reason``, one line, instead of "no such page"."""

    paths: tuple[str, ...]
    reason: str

    def routes(self) -> list[Route]:
        async def endpoint(request):
            raise Unavailable(self.reason)

        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        return [Route(p, endpoint, methods=methods) for p in self.paths]
