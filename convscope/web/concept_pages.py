"""The concept pages of one index: ``/concepts`` (every taught concept: its examples, how well
it separates, when it was taught), ``/concepts/{name}`` (its examples as thumbnails, each with a
button that removes it, and its top results), their JSON twins, and the writes that teach,
refine, take out an example or forget (:mod:`convscope.index.concepts`).

:class:`ConceptPages` is a page group (:class:`convscope.web.site.PageGroup`). Every write is a
POST from the gallery's own pages (:class:`~convscope.web.security.HostAndOrigin` refuses others
with 403), its body read within :data:`MAX_BODY` bytes (413 past it) and naming at most
:data:`MAX_ITEMS` photos, which must be entries or files of the index (a request never names a
file the index does not hold). The write itself is the library's: one SQLite transaction under
the folder's writer lock, one at a time in this server; searches read the concepts afresh, so
the next one sees it.

>>> pages = ConceptPages(site, Index.open("photos.index"))
>>> client.post("/api/concepts/rex", json={"examples": [12, 40], "counter": ["/photos/max.jpg"]})
"""
from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import threading
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..errors import ArgumentError, ConvscopeError, UnknownNameError
from ..files import printable_path
from ..index import concepts
from .common import ModelUnavailable, NotFound, jpeg, parse_number
from .finder import Finder
from .search_pages import PathJSON
from .site import Absent, NavLink, Site

#: The largest body of a write, in bytes.
MAX_BODY = 64 * 1024
#: Photos one request may name (examples and counter-examples together).
MAX_ITEMS = 200
#: Results shown on a concept's page.
TOP = 24
#: Pictures of why (Grad-CAM of a concept's score) kept in memory, about 20 kB each.
PICTURES = 256


class TooLarge(ConvscopeError, ValueError):
    status = 413


@contextlib.contextmanager
def _not_found():
    """An unknown concept is a page that is not there: 404, with the library's close matches."""
    try:
        yield
    except UnknownNameError as exc:
        raise NotFound(str(exc)) from None


def concept_url(name: str, *rest: str, api: bool = False) -> str:
    """``/concepts/NAME`` (``/api/concepts/NAME/...`` with ``api``), the name quoted whole."""
    return ("/api" if api else "") + "/concepts/" + "/".join([quote(name, safe=""), *rest])


class ConceptPages:
    """The concept pages of one index (see the module's docstring)."""

    search = None
    home = None
    absent = Absent(("/concepts", "/api/concepts", "/concepts/{rest:path}", "/api/concepts/{rest:path}"),
                    "this server has no index (it was started without one), so it has no concepts; start from /")

    def __init__(self, site: Site, index, model=None):
        self.site = site
        self.index = index
        self.given = model
        self._model = None
        self._loading = threading.Lock()
        self._pictures: collections.OrderedDict = collections.OrderedDict()  # the pictures of why, newest last
        self.finder = Finder(index, lambda: None, site.links)  # keyword results only: no model
        self.writing = threading.Lock()  # one write at a time in this server
        self.nav = [NavLink("Concepts", "/concepts")]
        self.api = {
            "concepts": "/api/concepts",
            "concept": "/api/concepts/{name}",
            "teach": "POST /api/concepts/{name} {\"examples\": [entry or indexed path...], \"counter\": [...]}",
            "remove example": "POST /api/concepts/{name}/remove {\"example\": path or sha256}",
            "forget": "POST /api/concepts/{name}/forget",
            "concept why picture": "/concepts/{name}/why/{entry}.jpg",
        }

    def reopen(self, index) -> None:
        """Serve ``index``, a newer version of this one, from now on (see :meth:`SearchPages.reopen`)."""
        self.index, self.finder = index, Finder(index, lambda: None, self.site.links)

    def routes(self) -> list[Route]:
        return [
            Route("/concepts", self.list_page),
            Route("/api/concepts", self.api_list),
            # a name may hold a "/": the actions first
            Route("/concepts/{name:path}/why/{row}.jpg", self.picture),
            Route("/concepts/{name:path}/remove", self.remove_form, methods=["POST"]),
            Route("/concepts/{name:path}/forget", self.forget_form, methods=["POST"]),
            Route("/api/concepts/{name:path}/remove", self.api_remove, methods=["POST"]),
            Route("/api/concepts/{name:path}/forget", self.api_forget, methods=["POST"]),
            Route("/concepts/{name:path}", self.concept_page),
            Route("/api/concepts/{name:path}", self.api_concept, methods=["GET", "HEAD"]),
            Route("/api/concepts/{name:path}", self.api_teach, methods=["POST"]),
        ]

    # ------------------------------------------------------------------ data

    def _example(self, e: concepts.Example) -> dict:
        record = self.index.file_of(e.path)
        served = record is not None and self.finder.roots.allows(record["path"])
        return {**e.to_json(), "name": self.finder.roots.display(e.path) if served else printable_path(os.path.basename(e.path)),
                "entry": record["first_row"] if record is not None else None,
                "thumb": self.site.links.thumb(record["first_row"]) if served else None}

    def summary(self, c: concepts.Concept) -> dict:
        return {"concept": c.name, "url": concept_url(c.name), "examples": len(c.positives()),
                "counter_examples": len(c.counters()), "taught": c.taught,
                "separation": None if c.separation is None else round(c.separation, 4)}

    def listing(self) -> dict:
        return {"concepts": [self.summary(c) for c in concepts.load(self.index)]}

    def _concept(self, name: str) -> concepts.Concept:
        name = concepts.check_name(name)
        held = concepts.load(self.index)
        found = held.get(name)
        if found is None:
            shown = ", ".join(held.names()[:8]) or "none yet"
            raise NotFound(f"there is no concept {name!r} in this index (it has: {shown})")
        return found

    def detail(self, name: str) -> dict:
        c = self._concept(name)
        out = {**self.summary(c), "threshold": c.threshold, "background": c.background,
               "examples": [self._example(e) for e in c.positives()],
               "counter_examples": [self._example(e) for e in c.counters()]}
        try:
            found = self.finder.search(c.name, top=TOP, min_score=0.0)
            out["results"], out["more"] = found["results"], found["more"]
        except (ConvscopeError, ValueError) as exc:  # a name that is no word of the grammar
            out["results"], out["more"], out["results_error"] = [], False, str(exc)
        return out

    def model(self):
        """The index's model (the one the app was given when it has the index's weights), loaded
        on first use: :class:`ModelUnavailable` (503) when it cannot be had."""
        with self._loading:
            if self._model is None:
                try:
                    self._model = self.index.checked_model(self.given)
                except ConvscopeError:
                    try:
                        self._model = self.index.checked_model(None)
                    except ConvscopeError as exc:
                        raise ModelUnavailable(f"the model of this index cannot be loaded: {exc}") from None
            return self._model

    def why_picture(self, name: str, row) -> bytes:
        """JPEG: the Grad-CAM of the concept's score over entry ``row``, as the model sees it.
        Runs the model: call it on the model thread."""
        concept = self._concept(name)
        record, time = self.finder.entry(row)
        key = (concept.key, concept.taught, int(parse_number(row, "entry", stop=self.index.entries)))
        with self._loading:
            if key in self._pictures:
                self._pictures.move_to_end(key)
                return self._pictures[key]
        data = self._draw(concept, record, time)
        with self._loading:
            self._pictures[key] = data
            while len(self._pictures) > PICTURES:
                self._pictures.popitem(last=False)
        return data

    def _draw(self, concept, record, time) -> bytes:
        from ..errors import ImageError
        from ..index.explain import entry_image

        model = self.model()
        path = self.finder._on_disk(record)
        try:
            image = entry_image(path, time if record["kind"] == "video" else None, resize=model.preprocessing.resize)
        except ImageError as exc:
            raise NotFound(f"{printable_path(os.path.basename(path))} can no longer be read ({exc.reason})") from None
        return jpeg(concept_picture(model, image, concept, self.index.meta.get("head")))

    # ------------------------------------------------------------------ writes

    async def read_json(self, request: Request) -> dict:
        """The body as a JSON object, refused past :data:`MAX_BODY` bytes before it is all read."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            raise TooLarge(f"the request is too large ({int(declared):,} bytes); the limit is {MAX_BODY:,}")
        chunks, received = [], 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > MAX_BODY:
                    raise TooLarge(f"the request is too large; the limit is {MAX_BODY:,} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            raise ArgumentError("the client went away before its request arrived") from None
        body = b"".join(chunks)
        if not body.strip():
            return {}
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArgumentError(f"the body is not JSON ({str(exc).splitlines()[0][:80]})") from None
        if not isinstance(data, dict):
            raise ArgumentError("the body must be a JSON object such as {\"examples\": [12, 40]}")
        return data

    async def read_form(self, request: Request) -> dict:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise TooLarge(f"the request is too large; the limit is {MAX_BODY:,} bytes")
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}

    def _paths(self, items, what: str) -> list[str]:
        """Indexed paths of ``items``: entry rows (numbers) or paths the index records."""
        if items is None:
            return []
        if not isinstance(items, list):
            raise ArgumentError(f"{what} must be a list of entries or indexed paths")
        out = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise ArgumentError(f"each of {what} is an entry (a number) or an indexed path, got {item!r:.60}")
            if isinstance(item, int):
                row = parse_number(item, "entry", stop=self.index.entries)
                file_id = int(self.index.entry_file[row])
                out.append(self.index.files([file_id])[file_id]["path"])
                continue
            record = self.index.file_of(item) if os.path.isabs(item) else None
            if record is None:
                raise ArgumentError(f"{printable_path(item[:120])!r} in {what} is not a file of this index; "
                                    "give entries, or paths the index records")
            out.append(record["path"])
        return out

    def teach(self, name: str, data: dict) -> dict:
        unknown = set(data) - {"examples", "counter"}
        if unknown:
            raise ArgumentError(f"unknown field {sorted(unknown)[0]!r:.60}; give examples and counter")
        examples, counter = data.get("examples"), data.get("counter")
        count = sum(len(x) for x in (examples, counter) if isinstance(x, list))
        if count > MAX_ITEMS:
            raise TooLarge(f"a request names at most {MAX_ITEMS} photos, got {count}")
        name = concepts.check_name(name)
        examples, counter = self._paths(examples, "examples"), self._paths(counter, "counter")
        with self.writing:
            taught = concepts.teach(self.index, name, examples, counter)
        return self.summary(taught)

    def remove(self, name: str, example) -> dict:
        if not isinstance(example, str):
            raise ArgumentError("give the example to remove: {\"example\": its path or SHA-256}")
        name = concepts.check_name(name)
        with self.writing, _not_found():
            return self.summary(concepts.remove_example(self.index, name, example))

    def forget(self, name: str) -> dict:
        name = concepts.check_name(name)
        with self.writing, _not_found():
            gone = concepts.forget(self.index, name)
        return {"forgot": gone.name, "examples": len(gone.positives())}

    # ------------------------------------------------------------------ endpoints

    async def list_page(self, request: Request):
        return self.site.page("concepts.html", data=await run_in_threadpool(self.listing))

    async def api_list(self, request: Request):
        return PathJSON(await run_in_threadpool(self.listing))

    async def concept_page(self, request: Request):
        data = await run_in_threadpool(self.detail, request.path_params["name"])
        return self.site.page("concept.html", data=data)

    async def api_concept(self, request: Request):
        return PathJSON(await run_in_threadpool(self.detail, request.path_params["name"]))

    async def api_teach(self, request: Request):
        data = await self.read_json(request)
        return PathJSON(await run_in_threadpool(self.teach, request.path_params["name"], data))

    async def api_remove(self, request: Request):
        data = await self.read_json(request)
        return PathJSON(await run_in_threadpool(self.remove, request.path_params["name"], data.get("example")))

    async def api_forget(self, request: Request):
        await self.read_json(request)  # bounded, and otherwise unused
        return PathJSON(await run_in_threadpool(self.forget, request.path_params["name"]))

    async def picture(self, request: Request):
        workers, p = self.site.workers, request.path_params
        async with workers.job():
            data = await workers.model(functools.partial(self.why_picture, p["name"], p["row"]), request=request)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=600"})

    async def remove_form(self, request: Request):
        form = await self.read_form(request)
        done = await run_in_threadpool(functools.partial(self.remove, request.path_params["name"], form.get("example")))
        return RedirectResponse(done["url"], status_code=303)

    async def forget_form(self, request: Request):
        await self.read_form(request)
        await run_in_threadpool(self.forget, request.path_params["name"])
        return RedirectResponse("/concepts", status_code=303)


def concept_picture(model, image, concept: concepts.Concept, head: str | None):
    """The Grad-CAM of a concept's decision (``normalize(embedding) @ weights + bias``, the
    embedding being the input of the classifier ``head``, as the index stores it, plus the
    weighted square roots of the probabilities of the concept's classes) at the model's default
    Grad-CAM layer, blended over the image as the model sees it (a PIL image)."""
    import numpy as np
    import torch

    from ..display import heat_picture
    from ..explain._common import check_layer, normalize01, prepare, upsample
    from ..hooks import capture, model_lock, run

    if not head:
        raise ModelUnavailable("this index records no classifier head, so a concept's picture cannot be drawn")
    layer = check_layer(model, None)
    x, pixels, _ = prepare(model, image)
    kept: dict = {}

    def keep(name, t):
        kept[name] = t
        return t.clone()

    w = torch.from_numpy(np.array(concept.weights, np.float32)).to(x.device)
    d, classes = concept.layout.embedding, list(concept.layout.classes)
    with model_lock(model.module), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        with capture(model.module, [layer], stop=False, transform=keep, inputs=[head]) as outs:
            logits = run(model.module, xg, outs)
        emb = outs.inputs[head].float()
        if emb.dim() > 2:  # a head over tokens: pooled, as the index pools them
            emb = emb.reshape(emb.shape[0], -1, emb.shape[-1]).mean(1)
        decision = torch.nn.functional.normalize(emb, dim=1)[0] @ w[:d] + concept.bias
        if classes:
            roots = torch.softmax(logits.float(), dim=1)[0, classes].clamp_min(1e-12).sqrt()
            decision = decision + roots @ w[d:]
        (grad,) = torch.autograd.grad(decision, kept[layer])
    weights = grad[0].mean(dim=(1, 2))
    cam = torch.relu((weights[:, None, None] * kept[layer].detach()[0]).sum(0)).float().cpu().numpy()
    heat = normalize01(upsample(normalize01(cam), x.shape[2:]))
    view = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    return heat_picture(view, heat)
