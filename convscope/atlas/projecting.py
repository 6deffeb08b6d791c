"""Projecting one layer's examples for an atlas and drawing them: the render's projection step.

:func:`project_examples` projects a group of examples (:func:`convscope.backproject.project_boxes`,
the batching) and draws each projection as it comes (:func:`convscope.display.to_picture`),
written as PNG files in the atlas's layout (:func:`convscope.pngfile.encode_png`); the build's
render (with a :class:`Drawer`: the pictures drawn on a thread of their own) and the gallery's
fills (:mod:`convscope.atlas.fill`) both use it.

>>> with Drawer() as drawer:
...     counts = project_examples(module, memory_format, info, group, inputs, ("guided",), 8, out, bar, drawer)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..backproject import project_boxes
from ..display import shown_box, to_picture
from ..files import atomic_write, safe_name
from ..pngfile import encode_png
from .records import ExampleRecord

#: Projections drawn and written at a time (:func:`project_examples`).
DRAW_GROUP = 64


def project_examples(module, memory_format, info, group: list[ExampleRecord], inputs, methods, batch_size, out,
                     bar, drawer: "Drawer | None" = None) -> dict:
    """Projections of one layer's examples (``group``), written as PNG files in the atlas's
    layout (so this stays with the atlas; the batching is :func:`convscope.backproject.project_boxes`),
    drawn by :func:`convscope.display.to_picture`: robust contrast, and for an example whose field
    is (nearly) the whole input the crop to the energy of its guided projection (one box for all
    its methods, recorded as its ``display_box`` on the model input). The projections are drawn
    as they come, :data:`DRAW_GROUP` at a time, so a group of thousands of examples holds a few
    batches of arrays. With a ``drawer`` (:class:`Drawer`) the pictures are drawn and written on
    its thread while the caller goes on; the records are filled once the drawer has waited for
    them."""
    ready: list[tuple[ExampleRecord, dict, tuple[int, int]]] = []

    def flush() -> None:
        if ready:
            todo = list(zip(*ready))
            ready.clear()
            if drawer is None:
                _draw(info.name, *todo, out)
            else:
                drawer.submit(_draw, info.name, *todo, out)

    def done(k: int, res: dict) -> None:
        e = group[k]
        ready.append((e, res, tuple(inputs[e.image_id].shape[-2:])))
        if len(ready) >= DRAW_GROUP:
            flush()

    _results, counts = project_boxes(
        module, info, [inputs[e.image_id] for e in group], [e.unit for e in group],
        [(e.y, e.x) for e in group], [e.value for e in group], methods, batch_size, memory_format,
        on_done=lambda k: bar.advance(k * len(methods)), on_result=done,
    )
    flush()
    return counts


def _draw(layer: str, group: list[ExampleRecord], results: list[dict], sizes: list[tuple[int, int]], out: Path) -> None:
    """:func:`project_examples`'s pictures: drawn, written, and named in their records."""
    for e, res, size in zip(group, results, sizes):
        res = {method: np.asarray(p, dtype=np.float64) for method, p in res.items()}  # converted once, not per use
        ref = res["guided"] if "guided" in res else next(iter(res.values()))
        t, l, b, r = shown_box(ref, e.box, size)
        e.display_box = (e.box[0] + t, e.box[1] + l, e.box[0] + b, e.box[1] + r)
        for method, p in res.items():
            rel = f"layers/{safe_name(layer)}/unit_{e.unit:04d}/top_{e.rank:02d}_{method}.png"
            _save_projection(to_picture(p[:, t:b, l:r])[0], out / rel)
            e.projections[method] = rel


class Drawer:
    """Draws and writes one group of projection pictures (:func:`project_examples`) on a thread
    of its own while the next group is projected: the drawing (the energy crop, the contrast,
    the PNG encoding) took a quarter of a whole build's render on one thread. At most one group
    waits (each holds its projections' arrays). As a context manager: on a normal exit, every
    picture is written (and a failure in writing one raised); on an error, what is running ends.

    >>> with Drawer() as drawer:
    ...     project_examples(..., drawer=drawer)
    """

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="convscope-draw")
        self._pending = None

    def submit(self, fn, *args) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        """Until the group submitted last is written (its error, if any, raised here)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> "Drawer":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _save_projection(array: np.ndarray, path: Path) -> None:
    """An atomic PNG write of a projection's picture (noise-like: :func:`convscope.pngfile.encode_png`,
    three times as fast as Pillow's and as small); not fsynced one by one (the build flushes its
    files at once: :func:`convscope.atlas.builder.build`; a fill fsyncs each one)."""
    with atomic_write(path, fsync=False) as f:
        f.write(encode_png(array))


__all__ = ["DRAW_GROUP", "Drawer", "project_examples"]
