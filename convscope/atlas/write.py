"""Writing an atlas database: the whole of a build's records in one transaction
(:func:`write_db`), the ``complete`` flag last, or a snapshot of a build in progress
(``building``). The schema and the reader are :mod:`convscope.atlas.store`."""
from __future__ import annotations

import datetime
import json
import sqlite3
from pathlib import Path

import numpy as np
import torch

from ..files import DiskFullError, json_number
from .records import Records
from .store import FORMAT, FORMAT_VERSION, HISTOGRAM_BINS, METHODS, QUANTILES, SCHEMA, fsync_file


def _display_histogram(hist: torch.Tensor, mids: np.ndarray, lo: float, hi: float) -> dict:
    """One unit's sketch counts (value order) rebinned into HISTOGRAM_BINS equal bins over
    [lo, hi] (each sketch bin goes whole to the bin of its midpoint), for drawing."""
    if not np.isfinite(lo) or not np.isfinite(hi):
        return {"counts": [], "edges": []}
    if hi <= lo:
        hi = lo + max(1e-6, abs(lo) * 1e-6)
    out_edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    counts = hist.numpy()
    nz = counts > 0
    which = np.clip(np.searchsorted(out_edges, np.clip(mids[nz], lo, hi), side="right") - 1, 0, HISTOGRAM_BINS - 1)
    binned = np.bincount(which, weights=counts[nz], minlength=HISTOGRAM_BINS)
    return {"counts": [int(v) for v in binned], "edges": [float(v) for v in out_edges]}


def write_db(path: Path, model, result, records: Records, incomplete: set[str], projections: dict,
             seconds: float, deconvnet: dict | None = None, building: dict | None = None) -> None:
    """Write the whole atlas database of a build to ``path`` (a new file) in one transaction, the
    ``complete`` flag last, then fsync it: ``model`` (LoadedModel), ``result`` (the
    :class:`~convscope.scan.Scan`), ``records`` (the build's), ``incomplete`` (layers some of
    whose examples have no files), ``projections`` (the meta entry), ``seconds`` (build time)
    and ``deconvnet`` (per layer, :meth:`convscope.backproject.Dependence.to_dict` plus
    ``computed``). ``building``: a snapshot of a build in progress (:attr:`Atlas.building`),
    written with ``complete`` false. A full disk raises :class:`~convscope.files.DiskFullError`."""
    try:
        _write_db(path, model, result, records, incomplete, projections, seconds, deconvnet or {}, building)
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "database or disk is full" in str(exc):
            raise DiskFullError(path) from None
        raise
    fsync_file(path)


_SQLITE_FULL = getattr(sqlite3, "SQLITE_FULL", 13)


def _write_db(path: Path, model, result, records: Records, incomplete: set[str], projections: dict,
              seconds: float, deconvnet: dict, building: dict | None = None) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executescript(SCHEMA)
        with conn:  # one transaction: all of the atlas, the `complete` flag last
            crops = result.crops
            describe = model.describe()
            meta = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "model": describe,
                "preprocessing": model.preprocessing.to_dict(),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "images": {
                    "inputs": len(result.paths),
                    "scanned": result.photos_scanned,
                    "skipped": len(result.skipped),
                    "crops_per_photo": crops.count,
                    "scanned_crops": result.state.images,
                },
                "top_k": result.state.top_k,
                "crops": crops.to_dict(),
                "projections": projections,
                "sketch": {**result.state.sketch.to_dict(), "bins": result.state.sketch.bins},
                "sampled_positions": {i.name: result.state.sketch.positions(*i.shape[1:]) for i in result.layers},
                "quantile_levels": list(QUANTILES),
                "build_seconds": round(seconds, 1),
                **({"building": building} if building is not None else {}),
            }
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            for pos, info in enumerate(result.layers):
                c, h, w = info.shape
                dep = deconvnet.get(info.name)
                conn.execute(
                    "INSERT INTO layers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (info.name, pos, info.type, c, h, w, info.stride[0], info.stride[1], info.receptive_field[0],
                     info.receptive_field[1], info.offset[0], info.offset[1], int(info.name not in incomplete),
                     result.ranked_by(info.name),
                     *((None,) * 4 if dep is None else
                       (int(dep["depends"]), dep["reason"], json.dumps(dep["switches"]), int(dep["computed"])))),
                )
                conn.executemany("INSERT INTO units VALUES (?,?,?,?,?,?,?,?,?,?,?)", unit_rows(result, info.name))
            for image_id in sorted(records.images):
                image = records.images[image_id]
                photo = records.photos[image.photo]
                size, win = photo.size, image.window
                conn.execute(
                    "INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (image_id, image.photo + result.offset, image.crop, photo.path, photo.sha256,
                     size[0] if size else None, size[1] if size else None,
                     win[1] if win else None, win[0] if win else None, win[3] if win else None, win[2] if win else None),
                )
            conn.executemany(
                "INSERT INTO examples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (e.layer, e.unit, e.rank, e.image_id, e.value, e.y, e.x, *e.box, *(e.box_original or (None,) * 4),
                     e.patch, *(e.projections.get(m) for m in METHODS), e.pre, *(e.display_box or (None,) * 4))
                    for e in records.examples
                ],
            )
            conn.executemany("INSERT INTO skipped VALUES (?, ?, 'scan')", [(p, r) for p, r in result.skipped])
            unreadable = [(result.paths[p.index], p.error) for _i, p in sorted(records.photos.items()) if p.error]
            conn.executemany("INSERT INTO skipped VALUES (?, ?, 'render')", unreadable)
            conn.execute("INSERT INTO meta VALUES ('complete', ?)", ("false" if building is not None else "true",))
    finally:
        conn.close()


def unit_rows(result, layer: str):
    """The ``units`` rows of ``layer``, from the scan state's summary."""
    s = result.state.summary(layer, QUANTILES)
    values = result.state.outputs(layer)  # the layer's output, also where the pre-activation ranks
    # each bin edge as JSON once per layer: a unit's sketch spans about a thousand bins (zero to
    # its largest value on the float32 bit pattern), so writing them one by one per unit was most
    # of a snapshot's time; the text is exactly json.dumps's
    edges = [json.dumps(json_number(e)) for e in s["edges"].tolist()]
    mids = result.state.sketch.mids().numpy()
    for u in range(values.shape[0]):
        hist = s["hist"][u]
        nz = torch.nonzero(hist).flatten()
        first, last = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
        counts = ", ".join(map(str, hist[first:last].tolist()))
        sketch = f'{{"first": {first}, "counts": [{counts}], "edges": [{", ".join(edges[first : last + 1]) if last else ""}]}}'
        lo, hi = float(s["min"][u]), float(s["max"][u])
        yield (
            layer, u, json_number(float(values[u, 0])), float(s["mean"][u]), json_number(lo), json_number(hi),
            float(s["frac_positive"][u]),
            json.dumps({str(q): json_number(float(v)) for q, v in zip(QUANTILES, s["quantiles"][u].tolist())}),
            json.dumps(_display_histogram(hist, mids, lo, hi)),
            sketch,
            None,
        )


__all__ = ["unit_rows", "write_db"]
