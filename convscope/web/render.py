"""Turning page data into HTML: the Jinja environment, URLs, and the histogram drawing.

The same templates serve the live server and the static export; only :class:`Links` differs.
On the server every URL is absolute (``/layers/conv1``); in an export every URL is relative to
the page (``../../layers/conv1/index.html``), so the folder works from any web server, any
sub-path, or straight from disk.

>>> links = Links(static=True, depth=2)
>>> links.unit("layer1.0", 3)
'../../layers/layer1.0/units/3/index.html'
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from urllib.parse import quote, urlencode

import jinja2

from ..files import printable_path

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def segment(name) -> str:
    """One URL path segment for a layer name or number (``/`` and ``..`` cannot survive it)."""
    return quote(str(name), safe="")


def static_dirname(name) -> str:
    """A file-system-safe folder name for a layer in an export (dotted names stay as they are)."""
    text = segment(name)
    return text if text not in (".", "..") else text.replace(".", "%2E")


class Links:
    """URLs of pages and files, for the server (``static=False``) or an export page ``depth``
    folders below the export root: the one URL helper of every page group (the atlas's pages,
    the uploads, the search pages, health and evolve; those past the atlas's on the server only)."""

    def __init__(self, static: bool = False, depth: int = 0):
        self.static = static
        self.depth = depth
        self.root = "../" * depth if static else "/"

    def _page(self, *parts) -> str:
        if self.static:
            path = "".join(quote(static_dirname(p), safe="") + "/" for p in parts)
            return (self.root + path + "index.html") if (self.root or path) else "index.html"
        return "/" + "/".join(segment(p) for p in parts)

    def home(self) -> str:
        return self._page()

    def layer(self, name: str) -> str:
        return self._page("layers", name)

    def unit(self, layer: str, unit: int) -> str:
        return self._page("layers", layer, "units", unit)

    def example(self, layer: str, unit: int, rank: int) -> str:
        return self._page("layers", layer, "units", unit, "examples", rank)

    def fill(self, layer: str, unit: int | None = None) -> str | None:
        """The endpoint that computes a unit's missing pictures, or (``unit`` None) the top
        patches a layer page lacks (None in an export)."""
        if self.static:
            return None
        return f"/api/layers/{segment(layer)}/fill" if unit is None else f"/api/layers/{segment(layer)}/units/{unit}/fill"

    def upload(self) -> str | None:
        return None if self.static else "/image"

    def uploaded(self, token: str, name: str) -> str:
        """A picture the server made of an upload (``input.png``, ``gradcam.png``, ...)."""
        return f"/uploads/{segment(token)}/{segment(name)}"

    def atlas_file(self, relative: str | None) -> str | None:
        if not relative:
            return None
        return self.root + "atlas/" + quote(str(relative).replace("\\", "/"))

    def source(self, layer: str, unit: int, rank: int, hash_: str | None = None) -> str:
        if self.static:
            return self.root + "sources/" + quote(source_filename(layer, unit, rank, hash_))
        return f"/sources/{segment(layer)}/{unit}/{rank}.jpg"

    def asset(self, name: str) -> str:
        return self.root + "static/" + name

    def api(self, *parts) -> str:
        if self.static:
            return self.root + "api/" + "/".join(static_dirname(p) for p in parts) + ".json"
        return "/api/" + "/".join(segment(p) for p in parts)

    # the pages of the other groups: on the server only (an export has none of them)

    def search(self, **params) -> str:
        # a path that is not valid UTF-8 (``like``) keeps its bytes: ``%E9``
        params = {k: v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v
                  for k, v in params.items() if v is not None and v != ""}
        return "/search" + ("?" + urlencode(params) if params else "")

    def like(self, path: str, time: float | None = None) -> str:
        return self.search(like=path, t=None if time is None else f"{time:g}")

    def thumb(self, row: int) -> str:
        return f"/thumbs/{int(row)}.jpg"

    def file(self, file_id: int, path: str, time: float | None = None) -> str:
        """An original, by id; its name as the last segment, a name that is not valid UTF-8 as
        :func:`~convscope.files.printable_path` shows it (``caf%5Cxe9.png``)."""
        name = os.path.basename(path)
        if not name.isprintable():
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                name = printable_path(name)
        url = f"/files/{int(file_id)}/{segment(name)}"
        return url + (f"#t={time:g}" if time else "")

    def explain(self, row: int, *, cls: int | None = None, unit: str | None = None) -> str:
        query = {"unit": unit} if unit is not None else {"class": int(cls)}
        return f"/explain/{int(row)}.jpg?" + urlencode(query)

    def duplicates(self) -> str:
        return "/duplicates"

    def albums(self) -> str:
        return "/albums"

    def album(self, name: str) -> str:
        return "/albums/" + segment(name)

    def places(self, country: str | None = None, region: str | None = None, city: str | None = None, *,
               page: int | None = None) -> str:
        """The places page: countries, a country's regions, a region's cities, a city's photos. A
        place with no region or city has it as "" (``region=&city=Lyon``)."""
        params = [(k, v) for k, v in (("country", country), ("region", region), ("city", city)) if v is not None]
        return "/places" + _query(params, page)

    def timeline(self, year: int | None = None, month: int | None = None, *, page: int | None = None) -> str:
        """The timeline page: years and their months, a year's months, a month's photos."""
        params = [(k, int(v)) for k, v in (("year", year), ("month", month)) if v is not None]
        return "/timeline" + _query(params, page)

    def health(self, layer: str | None = None) -> str:
        return "/health" + (f"/{segment(layer)}" if layer is not None else "")

    def evolve(self, layer: str | None = None) -> str:
        return "/evolve" + (f"/{segment(layer)}" if layer is not None else "")

    def evolve_file(self, relative: str | None) -> str | None:
        return None if not relative else "/evolve-files/" + quote(relative)


def _query(params: list, page: int | None) -> str:
    params = params + ([("page", int(page))] if page and page > 1 else [])
    return "?" + urlencode(params) if params else ""


def source_filename(layer: str, unit: int, rank: int, hash_: str | None) -> str:
    """Export file name of a source photo: by content hash when the atlas has one (so a photo
    used by many units is written once)."""
    if hash_ and all(c.isalnum() for c in str(hash_)):
        return f"{hash_}.jpg"
    return f"{static_dirname(layer)}-{unit}-{rank}.jpg"


def ranking(ranked_by: str, short: bool = False) -> str:
    """What ranks a layer, for a sentence: ``"pre-activation (input of ReLU6 'bn1.act')"`` becomes
    ``"input of ReLU6 'bn1.act'"`` (``short``: ``"input of ReLU6"``); ``"output"`` stays."""
    inner = ranked_by[ranked_by.find("(") + 1: ranked_by.rfind(")")] if "(" in ranked_by else ranked_by
    return inner.split(" '")[0] if short else inner


def fmt(value, digits: int = 3) -> str:
    """A number for people: ``None`` as an en dash, large and small values in short form."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    if isinstance(value, dict):
        return " · ".join(f"{str(k).replace('_', ' ')} {fmt(v, digits)}" for k, v in value.items())
    return str(value)


def brief(value, limit: int = 160) -> str:
    """A setting in one short line: nested tables and long lists are summarized, not dumped."""

    def short(v):
        if isinstance(v, dict):
            return "{…}"
        if isinstance(v, (list, tuple)) and (len(v) > 6 or any(isinstance(x, (dict, list, tuple)) for x in v)):
            return f"({len(v)} items)"
        if isinstance(v, str) and len(v) > 60:
            return v[:57] + "…"
        return fmt(v)

    if isinstance(value, dict):
        text = " · ".join(f"{str(k).replace('_', ' ')} {short(v)}" for k, v in value.items())
    else:
        text = short(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dims(value) -> str:
    """A shape, stride or size for people: ``[8, 8]`` -> ``8 × 8``."""
    if isinstance(value, (list, tuple)) and value:
        return " × ".join(fmt(v) for v in value)
    return fmt(value)


def side(value) -> str:
    """A per-axis pair that is usually square: ``[8, 8]`` -> ``8``, ``[8, 4]`` -> ``8 × 4``."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        return fmt(value[0])
    return dims(value)


def box(value) -> str:
    """A box (top, left, bottom, right) for people: ``y 10–60, x 20–90``."""
    if isinstance(value, (list, tuple)) and len(value) == 4:
        top, left, bottom, right = value
        return f"y {top}–{bottom}, x {left}–{right}"
    return "–"


def percentile(q) -> str:
    """A quantile level ``"0.99"`` as ``p99``."""
    try:
        return f"p{float(q) * 100:g}"
    except (TypeError, ValueError):
        return str(q)


def histogram_svg(counts, edges, width: int = 480, height: int = 150, mark: float | None = None) -> dict:
    """Bars of an activation histogram for an inline SVG, heights on a log scale (a ReLU map is
    mostly zeros, which would flatten every other bar). Returns the bars, axis ticks and the
    x position of ``mark`` (for example the unit's top activation)."""
    counts = [max(0, int(c)) for c in (counts or [])]
    edges = [float(e) for e in (edges or [])]
    if not counts or len(edges) != len(counts) + 1 or edges[-1] <= edges[0]:
        return {"bars": [], "width": width, "height": height}
    pad_l, pad_b, pad_t = 8, 22, 6
    inner_w, inner_h = width - 2 * pad_l, height - pad_b - pad_t
    lo, hi = edges[0], edges[-1]
    top = math.log1p(max(counts)) or 1.0

    def x_of(v):
        return pad_l + (v - lo) / (hi - lo) * inner_w

    bars = []
    for c, a, b in zip(counts, edges, edges[1:]):
        h = math.log1p(c) / top * inner_h
        bars.append({
            "x": round(x_of(a), 2), "w": round(max(0.5, x_of(b) - x_of(a) - 0.5), 2),
            "y": round(pad_t + inner_h - h, 2), "h": round(h, 2),
            "title": f"{fmt(a)} to {fmt(b)}: {c:,}",
        })
    ticks = [{"x": round(x_of(v), 2), "label": fmt(v, 2)} for v in (lo, (lo + hi) / 2, hi)]
    if lo < 0 < hi:  # zero matters most; it replaces any tick too close to it
        zero = round(x_of(0.0), 2)
        ticks = [t for t in ticks if abs(t["x"] - zero) >= 40] + [{"x": zero, "label": "0"}]
    out = {"bars": bars, "ticks": ticks, "width": width, "height": height, "base": pad_t + inner_h}
    if mark is not None and lo <= mark <= hi:
        out["mark"] = round(x_of(mark), 2)
    return out


def environment() -> jinja2.Environment:
    """The template environment: HTML autoescaping on; a field an atlas does not record renders
    as a dash, not an error (atlases from other versions may lack some)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["printable"] = printable_path
    env.filters["dims"] = dims
    env.filters["brief"] = brief
    env.filters["side"] = side
    env.filters["box"] = box
    env.filters["percentile"] = percentile
    env.filters["ranking"] = ranking
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str)
    env.globals["histogram_svg"] = histogram_svg
    return env


def render(env: jinja2.Environment, template: str, links: Links, **data) -> str:
    return env.get_template(template).render(links=links, **data)
