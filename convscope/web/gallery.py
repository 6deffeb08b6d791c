"""What each gallery page shows, as plain JSON-ready dicts, read from an atlas.

One :class:`Gallery` wraps one open atlas; its methods return the data behind the home, layer,
unit and source-image pages. The server sends these dicts as the JSON endpoints, renders them
into HTML, and the static export writes both, so the three cannot drift. File fields (``patch``,
``deconvnet``, ``guided``, ``featvis``) are paths relative to the atlas folder, or ``None`` where
that piece was not computed. Where a layer's deconvnet cannot depend on the image (no max-pool
or other forward-dependent routing below it; the atlas records it per layer), its pages show
guided backprop as the picture and say why (``deconvnet``, ``methods``, ``projection``).

>>> gallery = Gallery(Atlas.open("atlas/"))
>>> gallery.layer("layer1.0")["units"][0]["patch"]
'layers/layer1.0/unit_0000/top_00_patch.png'
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

from ..atlas.store import DB_NAME, METHODS, PARTIAL, SNAPSHOT_NAME, Atlas, unit_missing
from ..data import load_image
from ..errors import ConvscopeError, unknown_name_error
from .common import Memo, NotFound, confined_image
from ..files import json_number
from ..vocab import Vocabulary


class Gallery:
    """Read-only, cached page data for one atlas. Safe to share between request threads.

    ``atlas`` is an open :class:`convscope.atlas.Atlas`; the pages read its ``info()``,
    ``layers``, ``units(layer)``, ``examples(layer, unit)`` and ``path(relative)``.
    """

    def __init__(self, atlas, folder: str | os.PathLike | None = None):
        self.atlas = atlas
        self._cached = Memo()  # page data and source sizes, by key
        # an atlas still building: its folder, to follow the build's snapshots (refresh)
        self._folder = Path(folder) if folder is not None and atlas.building is not None else None
        self._seen = self._stamp()
        #: A line on work that goes on behind a finished atlas's pages (the fill's background
        #: cutting: :meth:`convscope.web.fill_pages.FillPages.cutting_line`), or None.
        self.activity: Callable[[], str | None] | None = None

    def _stamp(self):
        if self._folder is None:
            return None
        try:
            st = (self._folder / PARTIAL / SNAPSHOT_NAME).stat()
            snapshot = (st.st_ino, st.st_mtime_ns)
        except OSError:
            snapshot = None
        return (self._folder / DB_NAME).exists(), snapshot

    def refresh(self) -> bool:
        """For an atlas still building, open its newest snapshot, or the finished atlas once it is
        committed, and drop every cached page; True when it changed. A request that began on the
        old one finishes on it (it stays open). Cheap when nothing changed: two ``stat`` calls."""
        if self._folder is None:
            return False
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        try:
            atlas = Atlas.open(self._folder, building=True)
        except ConvscopeError:  # between the commit and the snapshot's removal, say: next time
            return False
        self._seen = stamp
        if atlas.building is None:
            self._folder = None  # finished: it changes only by the fill from now on
        self.atlas = atlas
        for name in ("info", "layer_names", "_layer_meta"):
            self.__dict__.pop(name, None)
        self._cached = Memo()
        return True

    def building_line(self) -> str | None:
        """One sentence on the build in progress for every page; for a finished atlas, the
        :attr:`activity` line (None when nothing goes on)."""
        b = self.atlas.building
        if b is None:
            return self.activity() if self.activity is not None else None
        if b["phase"] == "scanning":
            return (f"Building: {b['photos_done']:,} of {b['photos']:,} photos scanned (every layer at once). "
                    "These are the top examples so far; pages fill in as the scan goes on.")
        return f"Building: all {b['photos']:,} photos scanned; writing the atlas. These are its final top examples."

    @functools.cached_property
    def info(self) -> dict:
        return dict(self.atlas.info())

    @functools.cached_property
    def layer_names(self) -> list[str]:
        return list(self.atlas.layers)

    @functools.cached_property
    def _layer_meta(self) -> dict[str, dict]:
        return {entry["name"]: entry for entry in self.info["layers"]}

    def check_layer(self, name: str) -> int:
        """Position of layer ``name``; :class:`NotFound` with close matches and the atlas's
        layers otherwise."""
        try:
            return self.layer_names.index(name)
        except ValueError:
            raise unknown_name_error(
                "layer", name, self.layer_names, cls=NotFound,
                hint=f"It is not in this atlas, whose layers are: {', '.join(self.layer_names)}.",
            ) from None

    def unit_records(self, layer: str) -> list[dict]:
        """The atlas's per-unit statistics of ``layer``, in unit order (cached)."""
        self.check_layer(layer)
        return self._cached(("units", layer), lambda: list(self.atlas.units(layer)))

    def check_unit(self, layer: str, unit: int) -> dict:
        """The statistics record of ``unit``; :class:`NotFound` with the valid range otherwise."""
        units = self.unit_records(layer)
        if 0 <= unit < len(units) and units[unit]["unit"] == unit:
            return units[unit]
        raise NotFound(f"layer {layer!r} has units 0 to {len(units) - 1}; there is no unit {unit}")

    def _examples(self, layer: str, unit: int) -> list[dict]:
        self.check_unit(layer, unit)
        return self._cached(("examples", layer, unit), lambda: list(self.atlas.examples(layer, unit)))

    def file(self, relative: str) -> Path:
        """Absolute path of an atlas file, refusing anything outside the atlas or not a file."""
        try:
            path = Path(self.atlas.path(relative))
        except (ConvscopeError, ValueError, OSError) as exc:
            raise NotFound(f"no such atlas file {relative!r} ({exc})") from None
        try:  # defence in depth: atlas.path already refuses escapes
            path.resolve().relative_to(Path(self.atlas.root).resolve())
        except ValueError:
            raise NotFound(f"no such atlas file {relative!r}") from None
        if not path.is_file():
            raise NotFound(f"no such atlas file {relative!r}")
        return path

    def image_file(self, relative: str) -> tuple[Path, str]:
        """The path and media type of an atlas image to serve (:func:`confined_image`), so no
        name can hand out the atlas's database or scan state, whatever it is called or linked as."""
        return confined_image(self.atlas.root, relative, "atlas image")

    # ------------------------------------------------------------------ pages

    def projection_view(self, name: str) -> dict:
        """How layer ``name``'s projections are shown: ``methods`` (the columns of its unit and
        example pages, ``["deconvnet", "guided"]``, or ``["guided"]`` where the deconvnet does
        not depend on the image and the atlas left it out), ``projection`` (the method of the
        layer page's "projection" tiles), ``deconvnet`` (the atlas's record: ``depends``,
        ``computed``, ``reason``; None for atlases built before it was recorded) and ``note``
        (one sentence for the page when guided backprop stands in for the deconvnet, else None)."""
        dep = self._layer_meta[name].get("deconvnet")
        methods = self.atlas.methods(name)
        note = None
        if dep is not None and not dep["depends"] and not dep["computed"]:
            reason = dep["reason"].rstrip(".")
            note = reason[:1].upper() + reason[1:] + "."  # the atlas's own sentence
        return {"methods": methods, "projection": methods[0] if methods else None,
                "deconvnet": None if dep is None else {k: dep[k] for k in ("depends", "computed", "reason")},
                "note": note}

    def ranking(self, name: str) -> str:
        """What ranks layer ``name``'s top examples: ``"output"``, or the atlas's
        ``"pre-activation (input of ReLU6 'bn1.act')"``."""
        return self._layer_meta[name].get("ranked_by") or "output"

    def forget(self, layer: str, unit: int) -> None:
        """Drop the cached pages of ``unit`` of ``layer`` (after its projections or feature
        visualization were added to the atlas: :mod:`convscope.atlas.fill`)."""
        self._cached.forget(("units", layer), ("examples", layer, unit), ("layer", layer), ("names", layer), ("naming",), ("classes",))

    def forget_layer(self, layer: str) -> None:
        """Drop every cached page (after patches of many units of ``layer`` were cut)."""
        self._cached = Memo()

    def names(self, layer: str) -> dict[int, dict]:
        """The units of ``layer`` by their name record (:meth:`Atlas.unit_names`), cached: a named
        one first, a taught concept's before WordNet's; empty for an atlas never named."""
        def build():
            out: dict[int, dict] = {}
            for n in sorted(self.atlas.unit_names(layer), key=lambda n: (not n["named"], n["source"] != "concept")):
                out.setdefault(n["unit"], n)
            return out

        return self._cached(("names", layer), build)

    def image_classes(self) -> dict[int, dict]:
        """Per example image, the classifier's most probable class ({label, probability}) that
        the naming step kept (cached); empty for an atlas never named."""
        def build():
            labels = Vocabulary.load().labels
            return {i: {"label": labels[top[0][0]] if 0 <= top[0][0] < len(labels) else f"class {top[0][0]}",
                        "probability": top[0][1]}
                    for i, top in self.atlas.image_classes().items() if top}

        return self._cached(("classes",), build)

    def naming(self, layer: str) -> dict:
        """What a page says of ``layer``'s unit names: ``available`` (whether this atlas has
        them), ``note`` (why not, or how to add them), ``partial`` (one sentence when the layer's
        units see a part of the input, where a photo's class is weak evidence; else None)."""
        record = self._cached(("naming",), self.atlas.naming)
        if record is None:
            note = "This atlas has no unit names (it was built before they existed): run `convscope atlas name` on it."
        elif not record.get("available"):
            note = f"No unit names: {record.get('reason')}."
        else:
            note = None
        field = self._layer_meta[layer]["receptive_field"]
        size = (self.info.get("preprocessing") or {}).get("input_size") or [0, 0]
        partial = None
        if not all(f >= s > 0 for f, s in zip(field, size)):
            partial = (f"Units of this layer see {field[0]}x{field[1]} px of the {size[0]}x{size[1]} input: a name says "
                       "what the photos are, not the part the unit responds to (an edge, a texture), so it is weak "
                       "evidence here, and needs two thirds of the top examples.")
        return {"available": note is None, "note": note, "partial": partial}

    def layer_summary(self, name: str) -> dict:
        meta = self._layer_meta[name]
        return {
            "name": name,
            "index": self.layer_names.index(name),
            "shape": list(meta["shape"]),
            "channels": meta["shape"][0],
            "stride": meta["stride"],
            "receptive_field": meta["receptive_field"],
            "type": meta["type"],
        }

    def home(self) -> dict:
        """The atlas: model, preprocessing, how it was made, and its layers in network order."""
        info = self.info
        # shown elsewhere on the page, or internal detail (the histogram sketch's binning)
        known = {"model", "preprocessing", "created", "images", "layers", "complete", "building", "sketch", "format"}
        return {
            "model": info["model"],
            "preprocessing": info["preprocessing"],
            "created": info["created"],
            "complete": info["complete"],
            "building": info.get("building"),
            "images": info["images"],
            "settings": {k: v for k, v in info.items() if k not in known and v is not None},
            "layers": [self.layer_summary(name) for name in self.layer_names],
        }

    def layer(self, name: str) -> dict:
        """One layer: every unit with its top patch, top deconvnet projection and feature
        visualization (any may be ``None``), and the previous and next layers."""
        i = self.check_layer(name)
        view = self.projection_view(name)

        def build():
            units = []
            names = self.names(name)
            for record in self.unit_records(name):
                u = record["unit"]
                examples = self._examples(name, u)
                top = examples[0] if examples else dict.fromkeys(("patch", *METHODS))
                units.append({
                    "projection": top.get(view["projection"]),
                    "unit": u,
                    "top": json_number(record["top"]),
                    "patch": top["patch"],
                    "deconvnet": top["deconvnet"],
                    "guided": top["guided"],
                    "featvis": record["featvis"],
                    "name": names.get(u),
                })
            return {
                "naming": self.naming(name),
                "named": sum(1 for x in units if x["name"] and x["name"]["named"]),
                "layer": self.layer_summary(name),
                "prev": self.layer_names[i - 1] if i > 0 else None,
                "next": self.layer_names[i + 1] if i + 1 < len(self.layer_names) else None,
                "units": units,
                "building": self.atlas.building,
                # top patches still to cut (an atlas whose patches are cut on demand)
                "missing_tops": sum(1 for x in units if not x["patch"]) if self.atlas.patches_on_demand else 0,
                "computed": {
                    kind: sum(1 for x in units if x[kind])
                    for kind in ("patch", "deconvnet", "guided", "projection", "featvis")
                },
                **view,
            }

        return self._cached(("layer", name), build)

    def unit(self, layer: str, unit: int) -> dict:
        """One unit: statistics, activation histogram, top-K examples with their projections and
        boxes, the feature visualization, and neighbouring units."""
        record = self.check_unit(layer, unit)
        n = len(self.unit_records(layer))
        stored = self._examples(layer, unit)
        classes = self.image_classes()
        examples = [
            {
                "rank": ex["rank"],
                "name": Path(ex["path"]).name,  # the photo's file name only: no server paths
                "sha256": ex["sha256"],
                "value": json_number(ex["value"]),
                "pre": json_number(ex["pre"]),
                "y": ex["y"],
                "x": ex["x"],
                "box": ex["box"],
                "box_original": ex["box_original"],
                "patch": ex["patch"],
                "deconvnet": ex["deconvnet"],
                "guided": ex["guided"],
                "classified": classes.get(ex["image_id"]),
            }
            for ex in stored
        ]
        hist = record["histogram"]
        view = self.projection_view(layer)
        # what the on-demand fill (convscope.atlas.fill) would add
        missing = unit_missing(stored, record["featvis"], view["methods"], self.atlas.patches_on_demand,
                               self.atlas.building is not None)
        return {
            "layer": self.layer_summary(layer),
            "unit": unit,
            "stats": {
                "top": json_number(record["top"]),
                "mean": json_number(record["mean"]),
                "frac_positive": json_number(record["frac_positive"]),
                "quantiles": record["quantiles"],
            },
            "histogram": {"counts": list(hist["counts"]), "edges": list(hist["edges"])},
            "featvis": record["featvis"],
            "ranked_by": self.ranking(layer),
            **view,
            "name": self.names(layer).get(unit),
            "naming": self.naming(layer),
            "missing": missing,
            "building": self.atlas.building,
            "examples": examples,
            "prev": unit - 1 if unit > 0 else None,
            "next": unit + 1 if unit + 1 < n else None,
        }

    def _example(self, layer: str, unit: int, rank: int) -> dict:
        for ex in self._examples(layer, unit):
            if ex["rank"] == rank:
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
        size = ex["size"]
        if path is not None and not size:
            try:
                size = self.source_size(layer, unit, rank)
            except ConvscopeError:
                path = None
        size = list(size) if path is not None and size else None
        return {"layer": page["layer"], "unit": unit, "example": mine, "source_size": size,
                "ranked_by": page["ranked_by"], "methods": page["methods"], "note": page["note"],
                "source_available": size is not None, "sha256": ex["sha256"]}

    def source_path(self, layer: str, unit: int, rank: int) -> Path:
        """The photo an example was found in, as the atlas recorded its path (the atlas keeps
        no copy of it); :class:`NotFound` when it is no longer on disk."""
        image = Path(self._example(layer, unit, rank)["path"])
        if image.is_file():
            return image
        raise NotFound(f"the source image of this example ({image.name}) is no longer on disk")

    def source_image(self, layer: str, unit: int, rank: int, max_side: int = 1600):
        """The source photo decoded as the scan saw it (RGB, EXIF upright), at most ``max_side``
        pixels wide or high, and its full size (W, H), in which the example's box is given."""
        img = load_image(self.source_path(layer, unit, rank))
        size = img.size
        self._cached.put(("source_size", layer, unit, rank), size)
        if max(size) > max_side:
            img.thumbnail((max_side, max_side))
        return img, size

    def source_size(self, layer: str, unit: int, rank: int) -> tuple[int, int]:
        return self._cached.get(("source_size", layer, unit, rank)) or self.source_image(layer, unit, rank)[1]
