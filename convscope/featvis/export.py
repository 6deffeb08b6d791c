"""Writing feature visualizations to disk: PNG files and contact sheets, or into an atlas.

:func:`save_pngs` writes ``OUT/<layer>_<unit>.png`` and ``OUT/<layer>_sheet.png`` (the layer's
name made a file name by :func:`convscope.files.safe_name`, the atlas's rule). :func:`save_to_atlas`
hands each image to :meth:`convscope.atlas.Atlas.set_featvis`, which copies it to
``DIR/featvis/<layer>/unit_<u:04d>.png`` and records it in ``atlas.sqlite`` for the gallery.

>>> atlas = open_atlas("atlas/", model, "blocks.2")     # fails now, not after the rendering
>>> save_to_atlas(render(model, "blocks.2", "0-7"), "atlas/", opened=atlas)   # doctest: +SKIP
>>> close_atlas(atlas)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..atlas import Atlas
from ..errors import ConvscopeError
from ..files import atomic_write, safe_name
from .render import FeatvisResult


def _file_names(result: FeatvisResult, pattern: str) -> list[str]:
    seen: dict[int, int] = {}
    names = []
    for u in result.units:
        k = seen.get(u, 0)
        seen[u] = k + 1
        names.append(pattern.format(unit=str(u) if k == 0 else f"{u}-{k}"))
    return names


def _save_png(image, path: Path) -> None:
    with atomic_write(path) as f:
        image.save(f, format="PNG")


def save_pngs(result: FeatvisResult, out_dir) -> tuple[list[Path], Path]:
    """One PNG per unit, ``OUT/<layer>_<unit>.png``, and ``OUT/<layer>_sheet.png``; a unit given
    twice gets ``<unit>-1``, ``<unit>-2``, ... Each file is written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layer = safe_name(result.layer)
    paths = []
    for i, name in enumerate(_file_names(result, f"{layer}_{{unit}}.png")):
        path = out / name
        _save_png(result.image(i), path)
        paths.append(path)
    sheet = out / f"{layer}_sheet.png"
    _save_png(result.sheet(), sheet)
    return paths, sheet


def open_atlas(atlas_dir, model=None, layer: str | None = None) -> Atlas:
    """The atlas in ``atlas_dir``, checked before any rendering: built with ``model`` (a
    :class:`~convscope.models.LoadedModel`: same spec and weights) and holding ``layer``. Each
    failure is a one-line :class:`~convscope.errors.ConvscopeError`; close the atlas with
    :func:`close_atlas`."""
    atlas = Atlas.open(atlas_dir)
    try:
        built = atlas.info()["model"] or {}
        if model is not None:
            for key, ours in (("spec", model.spec), ("weights", model.weights)):
                if built.get(key) is not None and built[key] != ours:
                    raise ConvscopeError(
                        f"the atlas {atlas_dir} was built with {key} {built[key]!r}, not {ours!r}; "
                        "render with the atlas's model, or save the images outside the atlas"
                    )
        if layer is not None:
            atlas.layer(layer)  # a layer the atlas does not hold: its error, with its layers
    except BaseException:
        atlas.close()
        raise
    return atlas


def close_atlas(atlas: Atlas | None) -> None:
    """Close what :func:`open_atlas` returned (``None`` is fine)."""
    if atlas is not None:
        atlas.close()


def save_to_atlas(result: FeatvisResult, atlas_dir, opened: Atlas | None = None) -> list[Path]:
    """Add ``result`` to the atlas at ``atlas_dir`` (:meth:`~convscope.atlas.Atlas.set_featvis`
    for each unit); returns the absolute PNG path of each unit inside the atlas (the atlas
    records the images only).

    ``opened``: the atlas from :func:`open_atlas`, which stays the caller's to close; otherwise
    the atlas is opened and closed here.
    """
    atlas = opened if opened is not None else open_atlas(atlas_dir, layer=result.layer)
    try:
        with tempfile.TemporaryDirectory(prefix="convscope-featvis-") as tmp:
            paths = []
            for i, u in enumerate(result.units):
                src = Path(tmp) / f"{i}.png"
                result.image(i).save(src)
                paths.append(atlas.path(atlas.set_featvis(result.layer, int(u), src)))
        return paths
    finally:
        if opened is None:  # opened here, so closed here
            close_atlas(atlas)


__all__ = ["save_pngs", "save_to_atlas", "open_atlas", "close_atlas"]
