"""What each gallery page shows, as plain JSON-ready dicts, read from an atlas.

One :class:`Gallery` wraps one open atlas; its methods return the data behind the home, layer,
unit and source-image pages. The server sends these dicts as the JSON endpoints, renders them
into HTML, and the static export writes both, so the three cannot drift. File fields (``patch``,
``deconvnet``, ``guided``, ``featvis``) are paths relative to the atlas folder, or ``None`` where
that piece was not computed.

>>> gallery = Gallery(Atlas.open("atlas/"))
>>> gallery.layer("layer1.0")["units"][0]["patch"]
'layers/layer1.0/unit_0000/top_00_patch.png'
"""
from __future__ import annotations

import functools
import math
import threading
from pathlib import Path
from typing import Any

from ..errors import ConvscopeError


class NotFound(ConvscopeError, LookupError):
    """A layer, unit, example or file the atlas does not have; ``reason`` says which."""

    status = 404


def _pick(d: dict, *keys, default=None):
    """The first of ``keys`` present in ``d`` (the atlas schema names a few fields two ways)."""
    for key in keys:
        if isinstance(d, dict) and key in d and d[key] is not None:
            return d[key]
    return default


def _num(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class Gallery:
    """Read-only, cached page data for one atlas. Safe to share between request threads.

    ``atlas`` follows the reading API of :class:`convscope.atlas.Atlas`: ``info()``, ``layers``,
    ``layer(name)``, ``units(layer)``, ``examples(layer, unit)``, ``featvis(layer, unit)`` and
    ``path(relative)``.
    """

    def __init__(self, atlas):
        self.atlas = atlas
        self._lock = threading.Lock()
        self._cache: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ cached atlas reads

    def _cached(self, key: tuple, fn):
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = fn()
        with self._lock:
            self._cache[key] = value
        return value

    @functools.cached_property
    def info(self) -> dict:
        return dict(self.atlas.info())

    @functools.cached_property
    def layer_names(self) -> list[str]:
        return list(self.atlas.layers)

    def _layer_meta(self, name: str) -> dict:
        for entry in self.info.get("layers") or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                return entry
        return {}

    def check_layer(self, name: str) -> int:
        """Position of layer ``name``; :class:`NotFound` with the known names otherwise."""
        try:
            return self.layer_names.index(name)
        except ValueError:
            import difflib

            close = difflib.get_close_matches(name, self.layer_names, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise NotFound(
                f"layer {name!r} is not in this atlas.{hint} Its layers: {', '.join(self.layer_names)}"
            ) from None

    def unit_records(self, layer: str) -> list[dict]:
        """The atlas's per-unit statistics of ``layer`` (cached)."""
        self.check_layer(layer)
        return self._cached(("units", layer), lambda: list(self.atlas.units(layer)))

    def check_unit(self, layer: str, unit: int) -> dict:
        """The statistics record of ``unit``; :class:`NotFound` with the valid range otherwise."""
        units = self.unit_records(layer)
        if 0 <= unit < len(units) and int(units[unit].get("unit", unit)) == unit:
            return units[unit]
        for record in units:
            if int(record.get("unit", -1)) == unit:
                return record
        raise NotFound(f"layer {layer!r} has units 0 to {len(units) - 1}; there is no unit {unit}")

    def _examples(self, layer: str, unit: int) -> list[dict]:
        self.check_unit(layer, unit)
        return self._cached(("examples", layer, unit), lambda: list(self.atlas.examples(layer, unit) or []))

    def _featvis(self, layer: str, unit: int) -> str | None:
        record = self.check_unit(layer, unit)
        if "featvis" in record:  # the unit records carry it: no query per unit
            return record["featvis"]

        def read():
            try:
                return self.atlas.featvis(layer, unit)
            except (FileNotFoundError, KeyError, LookupError):
                return None

        return self._cached(("featvis", layer, unit), read)

    def file(self, relative: str) -> Path:
        """Absolute path of an atlas file, refusing anything outside the atlas or not a file."""
        try:
            path = Path(self.atlas.path(relative))
        except (ConvscopeError, ValueError, OSError) as exc:
            raise NotFound(f"no such atlas file {relative!r} ({exc})") from None
        root = Path(getattr(self.atlas, "root", None) or getattr(self.atlas, "dir", None) or path.parent)
        try:  # defence in depth: atlas.path already refuses escapes
            path.resolve().relative_to(Path(root).resolve())
        except ValueError:
            raise NotFound(f"no such atlas file {relative!r}") from None
        if not path.is_file():
            raise NotFound(f"no such atlas file {relative!r}")
        return path

    # ------------------------------------------------------------------ pages

    def layer_summary(self, name: str) -> dict:
        meta = self._layer_meta(name)
        shape = list(meta.get("shape") or [])
        return {
            "name": name,
            "index": self.layer_names.index(name),
            "shape": shape,
            "channels": shape[0] if shape else len(self.unit_records(name)),
            "stride": meta.get("stride"),
            "receptive_field": meta.get("receptive_field"),
            "type": meta.get("type"),
        }

    def home(self) -> dict:
        """The atlas: model, preprocessing, how it was made, and its layers in network order."""
        info = self.info
        images = _pick(info, "images", default={})
        # shown elsewhere on the page, or internal detail (the histogram sketch's binning)
        known = {"model", "preprocessing", "created", "images", "layers", "complete", "sketch", "format"}
        return {
            "model": info.get("model"),
            "preprocessing": info.get("preprocessing"),
            "created": info.get("created"),
            "complete": bool(info.get("complete", True)),
            "images": images if isinstance(images, dict) else {"scanned": images},
            "settings": {k: v for k, v in info.items() if k not in known and v is not None},
            "layers": [self.layer_summary(name) for name in self.layer_names],
        }

    def layer(self, name: str) -> dict:
        """One layer: every unit with its top patch, top deconvnet projection and feature
        visualization (any may be ``None``), and the previous and next layers."""
        i = self.check_layer(name)

        def build():
            units = []
            for record in self.unit_records(name):
                u = int(record.get("unit"))
                examples = self._examples(name, u)
                top = examples[0] if examples else {}
                units.append({
                    "unit": u,
                    "top": _num(_pick(record, "top", "max", "top_value")),
                    "patch": top.get("patch"),
                    "deconvnet": top.get("deconvnet"),
                    "guided": top.get("guided"),
                    "featvis": self._featvis(name, u),
                })
            return {
                "layer": self.layer_summary(name),
                "prev": self.layer_names[i - 1] if i > 0 else None,
                "next": self.layer_names[i + 1] if i + 1 < len(self.layer_names) else None,
                "units": units,
                "computed": {
                    kind: sum(1 for x in units if x[kind]) for kind in ("patch", "deconvnet", "guided", "featvis")
                },
            }

        return self._cached(("layer", name), build)

    def unit(self, layer: str, unit: int) -> dict:
        """One unit: statistics, activation histogram, top-K examples with their projections and
        boxes, the feature visualization, and neighbouring units."""
        record = self.check_unit(layer, unit)
        n = len(self.unit_records(layer))
        examples = []
        for ex in self._examples(layer, unit):
            examples.append({
                "rank": int(ex.get("rank", len(examples))),
                "image": Path(str(ex.get("image", ""))).name,
                "hash": ex.get("hash"),
                "value": _num(ex.get("value")),
                "y": ex.get("y"),
                "x": ex.get("x"),
                "box": ex.get("box"),
                "box_original": ex.get("box_original"),
                "patch": ex.get("patch"),
                "deconvnet": ex.get("deconvnet"),
                "guided": ex.get("guided"),
            })
        hist = _pick(record, "histogram", default={})
        counts = _pick(hist, "counts", default=None) if isinstance(hist, dict) else hist
        edges = _pick(hist, "edges", "bin_edges", default=None) if isinstance(hist, dict) else None
        if edges is None:
            edges = _pick(record, "bin_edges", "edges", default=None)
        return {
            "layer": self.layer_summary(layer),
            "unit": unit,
            "stats": {
                "top": _num(_pick(record, "top", "max", "top_value")),
                "mean": _num(record.get("mean")),
                "frac_positive": _num(record.get("frac_positive")),
                "quantiles": record.get("quantiles"),
            },
            "histogram": {"counts": list(counts or []), "edges": list(edges or [])},
            "featvis": self._featvis(layer, unit),
            "examples": examples,
            "prev": unit - 1 if unit > 0 else None,
            "next": unit + 1 if unit + 1 < n else None,
        }

    def _example(self, layer: str, unit: int, rank: int) -> dict:
        for ex in self._examples(layer, unit):
            if int(ex.get("rank", -1)) == rank:
                return ex
        raise NotFound(f"unit {unit} of layer {layer!r} has no example of rank {rank}")

    def example(self, layer: str, unit: int, rank: int) -> dict:
        """One top example on its source image: the image size and the box, in source pixels."""
        ex = self._example(layer, unit, rank)
        page = self.unit(layer, unit)
        mine = next(e for e in page["examples"] if e["rank"] == rank)
        try:
            path = self.source_path(layer, unit, rank)
        except NotFound:
            path = None
        size = ex.get("image_size")
        if path is not None and not size:
            try:
                size = self.source_size(layer, unit, rank)
            except ConvscopeError:
                path = None
        size = list(size) if path is not None and size else None
        return {"layer": page["layer"], "unit": unit, "example": mine, "source_size": size,
                "source_available": size is not None, "hash": ex.get("hash")}

    def source_path(self, layer: str, unit: int, rank: int) -> Path:
        """The source photo of an example: the atlas's own copy if it has one, else the original
        file it scanned. Only paths the atlas itself recorded are ever returned."""
        ex = self._example(layer, unit, rank)
        for key in ("source", "thumbnail"):
            if ex.get(key):
                return self.file(ex[key])
        image = ex.get("image")
        if image:
            if not Path(image).is_absolute():
                try:
                    return self.file(str(image))
                except NotFound:
                    pass
            if Path(image).is_file():
                return Path(image)
        raise NotFound(f"the source image of this example ({Path(str(image)).name}) is no longer on disk")

    def source_image(self, layer: str, unit: int, rank: int, max_side: int = 1600):
        """The source photo decoded as the scan saw it (RGB, EXIF upright), at most ``max_side``
        pixels wide or high, and its full size (W, H), in which the example's box is given."""
        from ..data import load_image

        img = load_image(self.source_path(layer, unit, rank))
        size = img.size
        with self._lock:
            self._cache[("source_size", layer, unit, rank)] = size
        if max(size) > max_side:
            img.thumbnail((max_side, max_side))
        return img, size

    def source_size(self, layer: str, unit: int, rank: int) -> tuple[int, int]:
        key = ("source_size", layer, unit, rank)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        return self.source_image(layer, unit, rank)[1]
