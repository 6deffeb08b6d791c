"""The gallery as static files: every page and its JSON, the atlas images they show, and the
stylesheet and script, in one folder that any web server (or a browser, from disk) can show.
Only the upload page is left out, since it needs the model.

>>> export_static("atlas/", "site/")            # then: python -m http.server -d site
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..files import atomic_write, write_bytes_atomic
from .common import NotFound
from .gallery import Gallery
from .render import STATIC, Links, environment, render, source_filename, static_dirname


def export_static(atlas, out: str | os.PathLike, progress: bool | None = None) -> dict:
    """Write the gallery of ``atlas`` (a folder or an open atlas) into ``out``; returns counts
    of pages, JSON files, images and sources written. Files already in ``out`` are overwritten,
    each atomically (a web server showing ``out`` meanwhile never sends half a file); nothing
    outside ``out`` is written."""
    from ..progress import Bar
    from .app import open_atlas

    gallery = Gallery(open_atlas(atlas))
    env = environment()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    counts = {"pages": 0, "json": 0, "images": 0, "sources": 0, "missing_sources": 0}
    copied: set[str] = set()

    def write(path: Path, text: str) -> None:
        # Renamed into place, not fsynced: an export is thousands of small files, rerun at will.
        write_bytes_atomic(path, text.encode("utf-8"), fsync=False)

    def inside(path: Path) -> Path:
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            raise NotFound(f"refusing to write outside the export folder: {path}")
        resolved.parent.mkdir(parents=True, exist_ok=True)
        return resolved

    def write_page(parts: list, template: str, **data) -> None:
        folder = out.joinpath(*[static_dirname(p) for p in parts])
        html = render(env, template, Links(static=True, depth=len(parts)), **data)
        write(inside(folder / "index.html"), html)
        counts["pages"] += 1

    def write_json(parts: list, data) -> None:
        *folders, last = [static_dirname(p) for p in parts]
        path = out.joinpath("api", *folders, f"{last}.json")
        write(inside(path), json.dumps(data, indent=1))
        counts["json"] += 1

    def copy(relative: str | None) -> None:
        if not relative or relative in copied:
            return
        copied.add(relative)
        try:
            src = gallery.file(relative)
        except NotFound:
            return
        with open(src, "rb") as f, atomic_write(inside(out / "atlas" / relative), fsync=False) as g:
            shutil.copyfileobj(f, g)
        counts["images"] += 1

    shutil.copytree(STATIC, out / "static", dirs_exist_ok=True)
    home = gallery.home()
    previews = {name: gallery.layer(name)["units"][:12] for name in gallery.layer_names}
    write_page([], "home.html", atlas=home, previews=previews)
    write_json(["atlas"], home)
    total_units = sum(len(gallery.unit_records(n)) for n in gallery.layer_names)
    written_sources: set[str] = set()
    with Bar(total_units, "exporting units", disable=None if progress is None else not progress) as bar:
        for name in gallery.layer_names:
            layer = gallery.layer(name)
            write_page(["layers", name], "layer.html", page=layer, total=len(gallery.layer_names))
            write_json(["layers", name], layer)
            for entry in layer["units"]:
                u = entry["unit"]
                unit = gallery.unit(name, u)
                write_page(["layers", name, "units", u], "unit.html", page=unit)
                write_json(["layers", name, "units", u], unit)
                copy(unit["featvis"])
                for ex in unit["examples"]:
                    for key in ("patch", "deconvnet", "guided"):
                        copy(ex[key])
                    example = gallery.example(name, u, ex["rank"])
                    write_page(["layers", name, "units", u, "examples", ex["rank"]], "example.html", page=example)
                    write_json(["layers", name, "units", u, "examples", ex["rank"]], example)
                    filename = source_filename(name, u, ex["rank"], example["sha256"])
                    if example["source_available"] and filename not in written_sources:
                        img, _ = gallery.source_image(name, u, ex["rank"])
                        with atomic_write(inside(out / "sources" / filename), fsync=False) as f:
                            img.save(f, "JPEG", quality=88)
                        written_sources.add(filename)
                        counts["sources"] += 1
                    elif not example["source_available"]:
                        counts["missing_sources"] += 1
                bar.advance()
    return counts
