"""Projections of many examples at once, each cropped to its unit's receptive field: the
batching behind ``atlas build``.

:func:`project_boxes` runs each example on the smallest window of its input that holds the
unit's receptive field (:func:`field_window`), checked against the unit's value on the whole
input, and lets the examples whose field is the whole input share one forward pass per input.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..hooks import forward_layers
from .project import forward_pass, project_methods


def field_window(info, y: int, x: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The smallest window (top, left, bottom, right) of the model input that holds the
    receptive field of unit (y, x), its edges on multiples of the layer's stride (so that every
    layer below sees the same grid and padding as on the whole input) or on the input's border."""
    t, l, b, r = info.box(y, x)
    (sy, sx), (h, w) = info.stride, size
    if sy <= 0 or sx <= 0:
        return 0, 0, h, w
    return (max(0, t // sy * sy), max(0, l // sx * sx), min(h, -(-b // sy) * sy), min(w, -(-r // sx) * sx))


def project_boxes(
    module: torch.nn.Module,
    info,
    inputs: Sequence[torch.Tensor],
    units: Sequence[int],
    positions: Sequence[tuple[int, int]],
    values: Sequence[float] | None = None,
    methods: Sequence[str] = ("deconvnet", "guided"),
    batch_size: int = 32,
    memory_format: torch.memory_format = torch.contiguous_format,
    on_done: Callable[[int], None] | None = None,
    on_result: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> tuple[list[dict[str, torch.Tensor]], dict]:
    """Projections of N examples of layer ``info`` (a LayerInfo), each cropped to its unit's
    receptive-field box: example ``k`` is unit ``units[k]`` at ``positions[k]`` (y, x) on the
    map of model input ``inputs[k]`` (3, H, W). Returns, per example, ``{method: (3, h, w)}``
    on the CPU, and counts of ``windowed``, ``whole_input`` and ``fallbacks`` examples.

    Every method of one batch shares one forward pass (:func:`~convscope.backproject.project.forward_pass`).

    Each example runs on the window of the input that holds its receptive field, edges on
    multiples of the layer's stride (:func:`field_window`): a unit with a 3-pixel field costs a
    32 x 32 window, not the whole input. That is exact for networks whose units see only their
    receptive field, and checked: the unit's value on the window must match ``values[k]`` (the
    scan's; computed on the whole input when not given) to 1e-4 of the largest, else the
    example runs on the whole input (a gate that sees everything without the gradient showing
    it). ``batch_size`` whole inputs per batch, or as many windows as fit in the same number of
    pixels (at most 16 times as many). A window of more than half the input is not worth its
    own forward pass: such examples go with the whole-input ones.

    Examples whose field is the whole input share a forward pass per input: examples given the
    same tensor object are on the same input, and a batch of ``batch_size`` distinct inputs
    runs forward once, then one backward pass per method for each round of at most one
    example per input (the rectifying rules are not linear, so two seeds on one input cannot
    share a backward pass).

    ``on_result(k, {method: (3, h, w)})``: called as soon as example ``k``'s projections are
    done, which are then not kept (the list returned holds empty dicts): a caller that draws
    them as they come holds a batch of arrays, not every example's. ``on_done(n)``: ``n`` more
    examples done (a progress bar's).

    >>> crops, counts = project_boxes(module, model.layers.get("blocks.2"), [x[0], x[1]], [3, 7], [(5, 9), (0, 2)])
    """
    n = len(inputs)
    if not (len(units) == len(positions) == n) or (values is not None and len(values) != n):
        raise ValueError("project_boxes needs one unit, one position (and one value) per input")
    methods = list(methods)
    size = tuple(int(v) for v in inputs[0].shape[-2:]) if n else (0, 0)
    full = (0, 0, size[0], size[1])
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    sy, sx = max(1, info.stride[0]), max(1, info.stride[1])
    if values is None and n:
        values = []
        for s in range(0, n, batch_size):
            x = torch.stack(list(inputs[s : s + batch_size])).to(device).contiguous(memory_format=memory_format)
            with torch.inference_mode():
                out = forward_layers(module, x, [info.name])[info.name]
            for i, k in enumerate(range(s, s + len(x))):
                values.append(float(out[i, units[k], positions[k][0], positions[k][1]]))
    scale = max((abs(v) for v in values), default=1.0) if n else 1.0
    tolerance = 1e-4 * max(scale, 1e-3)
    results: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]

    def keep(k: int, w: tuple, method: str, p: torch.Tensor) -> None:
        t, l, b, r = info.box(*positions[k], size)
        results[k][method] = p[:, t - w[0] : b - w[0], l - w[1] : r - w[1]]

    def finished(ks: list[int]) -> None:
        if on_result is not None:
            for k in ks:
                on_result(k, results[k])
                results[k] = {}
        if on_done is not None:
            on_done(len(ks))

    def run_windows(entries: list[tuple[int, tuple]]) -> list[int]:
        failed: list[int] = []
        if not entries:
            return failed
        w0 = entries[0][1]
        per_batch = max(1, min(16 * batch_size, batch_size * (size[0] * size[1]) // ((w0[2] - w0[0]) * (w0[3] - w0[1]))))
        for s in range(0, len(entries), per_batch):
            batch = entries[s : s + per_batch]
            x = torch.stack([inputs[k][:, w[0] : w[2], w[1] : w[3]] for k, w in batch]).to(device)
            x = x.contiguous(memory_format=memory_format)
            us = [units[k] for k, _ in batch]
            ps = [(positions[k][0] - w[0] // sy, positions[k][1] - w[1] // sx) for k, w in batch]
            res = project_methods(module, x, info.name, us, ps, methods)
            got = res[methods[0]].activations.float().cpu().tolist()
            ok = [abs(v - values[k]) <= tolerance for v, (k, _w) in zip(got, batch)]
            failed += [k for good, (k, _w) in zip(ok, batch) if not good]
            for method in methods:
                for good, (k, w), p in zip(ok, batch, res[method].pixels.float().cpu()):
                    if good:
                        keep(k, w, method, p)
            finished([k for good, (k, _w) in zip(ok, batch) if good])
        return failed

    def run_whole(ks: list[int]) -> None:
        # examples grouped by input; inputs with most examples first, so a batch's rounds are full
        by_input: dict[int, list[int]] = {}
        for k in ks:
            by_input.setdefault(id(inputs[k]), []).append(k)
        queues = sorted(by_input.values(), key=len, reverse=True)
        for s in range(0, len(queues), batch_size):
            batch = queues[s : s + batch_size]
            x = torch.stack([inputs[q[0]] for q in batch]).to(device).contiguous(memory_format=memory_format)
            rounds = len(batch[0])
            with forward_pass(module, x, [info.name], methods, warn=True) as fp:
                out = fp.outputs[info.name]
                for r in range(rounds):
                    rows = [(i, q[r]) for i, q in enumerate(batch) if r < len(q)]
                    seed = torch.zeros_like(out)
                    for i, k in rows:
                        seed[i, units[k], positions[k][0], positions[k][1]] = 1.0
                    for mi, method in enumerate(methods):
                        last = r == rounds - 1 and mi == len(methods) - 1
                        pixels = fp.backward({info.name: seed}, method, retain=not last).float().cpu()
                        for i, k in rows:
                            keep(k, full, method, pixels[i])
                    finished([k for _i, k in rows])

    by_size: dict[tuple[int, int], list[tuple[int, tuple]]] = {}
    for k in range(n):
        w = field_window(info, positions[k][0], positions[k][1], size)
        if 2 * (w[2] - w[0]) * (w[3] - w[1]) > size[0] * size[1]:
            w = full  # a window of most of the input saves little; the shared forward saves more
        by_size.setdefault((w[2] - w[0], w[3] - w[1]), []).append((k, w))
    redo: list[int] = []
    for hw in sorted(key for key in by_size if key != size):
        redo += run_windows(by_size[hw])
    run_whole([k for k, _w in by_size.get(size, [])] + redo)
    windowed = sum(len(v) for key, v in by_size.items() if key != size)
    return results, {"windowed": windowed - len(redo), "whole_input": len(by_size.get(size, [])), "fallbacks": len(redo)}


__all__ = ["field_window", "project_boxes"]
