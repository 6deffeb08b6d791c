"""Writing feature visualizations to disk: PNG files and contact sheets, or into an atlas.

Atlas hand-off: :mod:`convscope.atlas` provides ``Atlas.open(dir)`` and
``Atlas.set_featvis(layer, unit, png)``, which copies the image to
``DIR/featvis/<layer>/unit_<u:04d>.png`` and records it in ``atlas.sqlite`` for the gallery;
that is what ``--atlas`` uses. Should the atlas module lack such a method (one of
:data:`ATLAS_METHODS`), the files go to the same place, with an index beside them::

    DIR/featvis/<layer>/unit_<u:04d>.png
    DIR/featvis/<layer>/sheet.png          contact sheet of every unit rendered so far
    DIR/featvis/<layer>/index.json         {"version": 1, "layer": ..., "units": [{"unit": 5,
                                             "file": "unit_0005.png", "objective": 3.2, "seed": ...,
                                             "steps": 512, "size": 128, ...}, ...]}

``index.json`` is merged with an existing one, so layers and units can be rendered in parts.
"""
from __future__ import annotations

import inspect
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConvscopeError
from .render import FeatvisResult, contact_sheet

ATLAS_METHODS = ("set_featvis", "add_featvis", "attach_featvis")


def _safe(layer: str) -> str:
    # Dotted PyTorch names are fine in file names; only path separators are not.
    return layer.replace("/", "_").replace(os.sep, "_")


def _file_names(result: FeatvisResult, pattern: str, width: int = 0) -> list[str]:
    seen: dict[int, int] = {}
    names = []
    for u in result.units:
        k = seen.get(u, 0)
        seen[u] = k + 1
        text = f"{u:0{width}d}" if width else str(u)
        names.append(pattern.format(unit=text if k == 0 else f"{text}-{k}"))
    return names


def save_pngs(result: FeatvisResult, out_dir) -> tuple[list[Path], Path]:
    """One PNG per unit, ``OUT/<layer>_<unit>.png``, and ``OUT/<layer>_sheet.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layer = _safe(result.layer)
    paths = []
    for i, name in enumerate(_file_names(result, f"{layer}_{{unit}}.png")):
        path = out / name
        result.image(i).save(path)
        paths.append(path)
    sheet = out / f"{layer}_sheet.png"
    result.sheet().save(sheet)
    return paths, sheet


def open_atlas(atlas_dir, model=None, layer: str | None = None):
    """The atlas in ``atlas_dir`` and its method to attach an image to (layer, unit), or
    ``(None, None)`` when :mod:`convscope.atlas` has no such method (then :func:`save_to_atlas`
    writes the fallback layout). Checks, before any rendering, that the atlas was built with the
    same model and holds ``layer``; each is a one-line :class:`ConvscopeError`."""
    try:
        from .. import atlas as atlas_module  # written separately from this package
    except ImportError:
        return None, None
    cls = getattr(atlas_module, "Atlas", None)
    name = next((n for n in ATLAS_METHODS if callable(getattr(cls, n, None))), None)
    if cls is None or not hasattr(cls, "open") or name is None:
        return None, None
    try:
        inspect.signature(getattr(cls, name)).bind(None, "layer", 0, "path")
    except (TypeError, ValueError):
        return None, None
    atlas = cls.open(atlas_dir)
    try:
        built = (atlas.info() or {}).get("model") if hasattr(atlas, "info") else None
        if model is not None and isinstance(built, dict):
            for key, ours in (("spec", model.spec), ("weights", model.weights)):
                if built.get(key) is not None and built.get(key) != ours:
                    raise ConvscopeError(
                        f"the atlas {atlas_dir} was built with {key} {built.get(key)!r}, not {ours!r}; "
                        "run featvis with the atlas's --model/--weights, or use --out"
                    )
        layers = getattr(atlas, "layers", None)
        if layer is not None and isinstance(layers, list) and layer not in layers:
            raise ConvscopeError(
                f"layer {layer!r} is not in the atlas {atlas_dir} (its layers: {', '.join(layers)}); "
                "pick one of them, or use --out"
            )
    except BaseException:
        close_atlas((atlas, None))
        raise
    return atlas, getattr(atlas, name)


def close_atlas(opened) -> None:
    """Close what :func:`open_atlas` returned (``None`` and ``(None, None)`` are fine)."""
    atlas = opened[0] if opened else None
    close = getattr(atlas, "close", None)
    if callable(close):
        close()


def save_to_atlas(result: FeatvisResult, atlas_dir, meta: dict | None = None, opened=None) -> list[Path]:
    """Add ``result`` to the atlas at ``atlas_dir``; returns the PNG path of each unit.

    With the atlas's own method (``opened`` from :func:`open_atlas`, or opened here) each PNG is
    handed to it (``Atlas.set_featvis`` copies it to ``featvis/<layer>/unit_<u>.png`` and records
    it); an atlas opened here is closed here, one passed in is the caller's to close. Otherwise the fallback layout of the module docstring is
    written, with ``meta`` (steps, size, model, ...) in ``index.json``.
    """
    atlas, attach = opened if opened is not None else open_atlas(atlas_dir)
    if attach is None:
        folder = Path(atlas_dir) / "featvis" / _safe(result.layer)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, name in enumerate(_file_names(result, "unit_{unit}.png", width=4)):
            path = folder / name
            result.image(i).save(path)
            paths.append(path)
        _merge_index(folder, result, paths, meta or {})
        return paths
    try:
        with tempfile.TemporaryDirectory(prefix="convscope-featvis-") as tmp:
            paths = []
            for i, u in enumerate(result.units):
                src = Path(tmp) / f"{i}.png"
                result.image(i).save(src)
                rel = attach(result.layer, int(u), str(src))
                resolve = getattr(atlas, "path", None)
                paths.append(resolve(rel) if isinstance(rel, str) and callable(resolve) else Path(atlas_dir) / str(rel))
        return paths
    finally:
        if opened is None:  # opened here, so closed here; a caller closes its own
            close_atlas((atlas, attach))


def _merge_index(folder: Path, result: FeatvisResult, paths: list[Path], meta: dict) -> None:
    index_path = folder / "index.json"
    entries: dict[str, dict] = {}
    try:
        old = json.loads(index_path.read_text())
        entries = {Path(e["file"]).name: e for e in old.get("units", []) if "file" in e}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    for u, path, value, s in zip(result.units, paths, result.objective, result.seeds):
        entries[path.name] = {
            "unit": int(u), "file": path.name, "objective": float(value), "seed": int(s),
            "objective_name": result.objective_name, **meta,
        }
    ordered = sorted(entries.values(), key=lambda e: (e["unit"], e["file"]))
    # The sheet shows every unit rendered so far, in unit order.
    from PIL import Image

    images, labels = [], []
    for e in ordered:
        try:
            with Image.open(folder / e["file"]) as im:
                images.append(np.asarray(im.convert("RGB")))
        except OSError:
            continue
        labels.append(f"{e['unit']}: {e['objective']:.3g}")
    if images and len({im.shape for im in images}) == 1:
        contact_sheet(np.stack(images), labels, title=result.layer).save(folder / "sheet.png")
    else:  # renders of different sizes: the sheet shows the latest one
        result.sheet().save(folder / "sheet.png")
    index = {"version": 1, "layer": result.layer, "sheet": "sheet.png", "units": ordered}
    tmp = index_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)


__all__ = ["save_pngs", "save_to_atlas", "open_atlas", "close_atlas", "ATLAS_METHODS"]
