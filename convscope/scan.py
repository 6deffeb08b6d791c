"""The streaming top-k engine: which images excite each unit most, in one pass over any number
of photos, with a state that merges, serializes and resumes exactly.

Per image and unit the scan keeps the spatial maximum of the unit's map and its position (an
image counts at most once per unit, as in Zeiler & Fergus); per unit it keeps the best ``top``
images as tensors on the model's device, merged for all units of a layer at once. The order is
total: by value, then (for ties, such as a ReLU6 unit saturating at 6.0 in many images) by the
sum of the image's map (the image where more of the map responds first), then by the lower image
id: the sums and ids are ordered by one argsort of int64 keys ``(order-preserving bits of the
float32) << 32 | (2**32 - 1 - id)``, then one ``topk`` of the unique keys ``value bits << 32 |
place in that order`` picks the best K, so the result does not depend on batch order or on how
the work was split.

A layer whose output is a saturating activation (ReLU6: many top values tie at exactly 6.0) can
be ranked by that activation's input instead (``rank_by``, :func:`convscope.scan_settings.ranking`):
then ``values`` and ``sums`` are the pre-activation map's maximum and sum, ``pos`` its argmax,
and ``post`` the layer's output there (for a monotone activation also the output's maximum).

Alongside, per unit, a summary of its activation distribution: an exact fixed-point sum over
every position (for the mean), the maximum, and a streaming histogram with fixed log-spaced bins
(:class:`Sketch`, over a fixed grid of at most 32 x 32 positions per map) for quantiles, the
minimum and the fraction of positive positions. All of it merges exactly:
``merge(scan(A), scan(B)) == scan(A + B)`` bit for bit, as long as ``A`` and ``B`` are disjoint
and carry global image ids (``offset``).

>>> result = scan(model, ["photos/"], layers=["layer3"], top=9)
>>> values, ids, ys, xs = result.state.top("layer3")       # each (C, 9), best first
>>> result.examples("layer3", 17)[0]                       # the best image of unit 17
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch

from .crops import Crops, CropTransform
from .errors import ConvscopeError
from .files import atomic_write, disk_full_as_error, remove_stale_temps
from .scan_settings import (RANK_BY, check_arguments, checkpoint_config, describe_ranking, fingerprint,
                            load_checkpoint, rank_choices, ranking, resume_from)
from .sketch import Sketch

STATE_VERSION = 1
#: The next step after a full disk stopped a checkpointed run (every file written is whole).
RESUME_HINT = "free some space and run again with resume=True"
_ID_LIMIT = 2**32 - 1  # image ids live in the low 32 bits of the tie-break key
_FIXED_POINT = 2.0**16  # per-image sums are rounded to 1/65536 before the exact integer sum


def _value_key(values: torch.Tensor) -> torch.Tensor:
    """int32 keys in the order of the float32 values (-0.0 just below +0.0)."""
    bits = values.contiguous().view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _top_order(values: torch.Tensor, sums: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices (C, k) of the best ``k`` candidates per row: by value, then by the map's
    sum, then by the lower id. One argsort by (sum, id), then one ``topk`` over unique int64 keys
    ``value bits << 32 | place in that order``, for all rows at once."""
    by_sum = torch.argsort(_order_key(sums, ids), dim=1, descending=True)
    n = values.shape[1]
    place = torch.arange(n - 1, -1, -1, device=values.device)  # earlier in by_sum: larger
    keys = (_value_key(values.gather(1, by_sum)).long() << 32) | place
    return by_sum.gather(1, keys.topk(k, dim=1).indices)


def _order_key(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys, one per (value, id): a larger value gives a larger key, and of equal values the
    lower id does; empty slots (id < 0) get the smallest key. NaN must be replaced beforehand."""
    key = (_value_key(values).long() << 32) | (_ID_LIMIT - ids.clamp(min=0))
    return torch.where(ids < 0, torch.full_like(key, torch.iinfo(torch.int64).min), key)


# --------------------------------------------------------------------------- the state


class ScanState:
    """Mergeable per-layer statistics of a scan; every field is a tensor on ``device``.

    Per layer (``C`` units, map ``H x W``, ``K = top``):

    * ``values`` (C, K) float32, ``ids`` (C, K) int64, ``pos`` (C, K) int64 (``y * W + x``),
      ``sums`` (C, K) float32 (the sum of the image's map, the first tie-break): the best images
      per unit, best first; empty slots have id -1 and value -inf;
    * ``hist`` (C, bins) int64: :class:`Sketch` counts (raw bin layout) over the sampled positions;
    * ``sum`` (C,) int64: sum over images of round(per-image sum of the whole map * 2**16);
    * ``min`` (C,) float32 over the sampled positions, ``max`` (C,) float32 over all of them;
    * for a layer ranked by its pre-activation (``rank_by[layer] == "pre-activation"``),
      ``values``, ``sums`` and ``pos`` are those of the pre-activation map (the activation's
      input), and ``post`` (C, K) float32 is the layer's output at ``pos``; the statistics
      (``hist``, ``sum``, ``min``, ``max``) stay on the output.

    ``images`` counts the images seen. Feed it with :meth:`update`; combine shards with
    :meth:`merge`; serialize with :meth:`state_dict` / :meth:`from_state_dict` (tensors, numbers
    and strings only: ``torch.load(..., weights_only=True)`` reads it back).

    >>> state = ScanState({"layer1": (64, 56, 56)}, top=9)
    >>> state.update({"layer1": acts}, image_ids=torch.arange(32))     # acts (32, 64, 56, 56)
    >>> state.merge(other_state)
    """

    def __init__(self, layers: Mapping[str, Sequence[int]], top: int = 9, device: torch.device | str = "cpu",
                 sketch: Sketch = Sketch(), rank_by: Mapping[str, str] | None = None):
        if not isinstance(top, int) or top < 1:
            raise ValueError(f"top must be a positive whole number, got {top!r}")
        rank_by = dict(rank_by or {})
        for name, how in rank_by.items():
            if name not in layers or how not in ("output", "pre-activation"):
                raise ValueError(f"rank_by[{name!r}] = {how!r}: give a layer of the state and 'output' or 'pre-activation'")
        self.top_k = top
        self.device = torch.device(device)
        self.sketch = sketch
        self.shapes = {name: tuple(int(s) for s in shape) for name, shape in layers.items()}
        self.images = 0
        self.tensors: dict[str, dict[str, torch.Tensor]] = {}
        for name, (c, _h, _w) in self.shapes.items():
            dev = self.device
            self.tensors[name] = {
                "values": torch.full((c, top), float("-inf"), device=dev),
                "ids": torch.full((c, top), -1, dtype=torch.long, device=dev),
                "pos": torch.full((c, top), -1, dtype=torch.long, device=dev),
                "sums": torch.full((c, top), float("-inf"), device=dev),
                "hist": torch.zeros((c, sketch.bins), dtype=torch.long, device=dev),
                "sum": torch.zeros(c, dtype=torch.long, device=dev),
                "min": torch.full((c,), float("inf"), device=dev),
                "max": torch.full((c,), float("-inf"), device=dev),
            }
            if rank_by.get(name) == "pre-activation":
                self.tensors[name]["post"] = torch.full((c, top), float("-inf"), device=dev)
        #: per layer, "output" or "pre-activation": which map's maximum ranks its top images
        self.rank_by = {name: rank_by.get(name, "output") for name in self.shapes}

    @property
    def layers(self) -> list[str]:
        return list(self.shapes)

    # ------------------------------------------------------------------ streaming

    @property
    def pre_ranked(self) -> list[str]:
        """The layers ranked by their pre-activation."""
        return [name for name, how in self.rank_by.items() if how == "pre-activation"]

    def update(self, activations: Mapping[str, torch.Tensor], image_ids: torch.Tensor | Sequence[int],
               pre: Mapping[str, torch.Tensor] | None = None) -> None:
        """Fold in one batch: ``activations[layer]`` is (B, C, H, W) for every layer of the state,
        ``image_ids`` (B,) the global ids (0 <= id < 2**32) of the batch's images, ``pre[layer]``
        the pre-activation maps (B, C, H, W) of every layer ranked by them."""
        ids = torch.as_tensor(image_ids, dtype=torch.long).to(self.device)
        if ids.dim() != 1:
            raise ValueError(f"image_ids must be one id per image, got shape {tuple(ids.shape)}")
        if len(ids) == 0:
            return
        if int(ids.min()) < 0 or int(ids.max()) > _ID_LIMIT - 1:
            raise ValueError(f"image ids must lie in [0, {_ID_LIMIT - 1}]")
        for name, shape in self.shapes.items():
            if name not in activations:
                raise ValueError(f"no activations for layer {name!r} in this batch")
            act = activations[name]
            if act.dim() != 4 or tuple(act.shape[1:]) != shape or act.shape[0] != len(ids):
                raise ValueError(
                    f"layer {name!r}: expected activations of shape ({len(ids)}, {', '.join(map(str, shape))}), "
                    f"got {tuple(act.shape)}"
                )
            if self.rank_by[name] == "pre-activation" and (
                    pre is None or name not in pre or tuple(pre[name].shape) != tuple(act.shape)):
                got = "none" if pre is None or name not in pre else f"shape {tuple(pre[name].shape)}"
                raise ValueError(f"layer {name!r} is ranked by its pre-activation: give pre[{name!r}] of the "
                                 f"activations' shape {tuple(act.shape)} (got {got})")
        for name in self.shapes:
            key = pre[name].detach().to(self.device, torch.float32) if self.rank_by[name] == "pre-activation" else None
            self._update_layer(name, activations[name].detach().to(self.device, torch.float32), ids, key)
        self.images += len(ids)

    def _update_layer(self, name: str, act: torch.Tensor, ids: torch.Tensor, pre: torch.Tensor | None = None) -> None:
        # Reductions only over the full map (they allocate nothing large); everything that
        # writes per-position temporaries runs on the sketch's sampling grid.
        t = self.tensors[name]
        b, c, h, w = act.shape
        flat = act.reshape(b, c, h * w)
        best = flat.amax(dim=2)  # (B, C); the position is looked up only for new top-K entries
        best = torch.where(torch.isnan(best), torch.full_like(best, float("-inf")), best)
        sums = flat.sum(dim=2)  # (B, C) float32, one image at a time
        clean = torch.where(torch.isnan(sums), torch.full_like(sums, float("-inf")), sums)
        if pre is None:
            self._merge_top(t, best.t(), clean.t(), ids.view(1, b).expand(c, b), None, flat)
        else:  # ranked by the pre-activation map: its maximum, its sum, its argmax; the output there
            key = pre.reshape(b, c, h * w)
            kbest, ksums = key.amax(dim=2), key.sum(dim=2)
            kbest = torch.where(torch.isnan(kbest), torch.full_like(kbest, float("-inf")), kbest)
            ksums = torch.where(torch.isnan(ksums), torch.full_like(ksums, float("-inf")), ksums)
            self._merge_top(t, kbest.t(), ksums.t(), ids.view(1, b).expand(c, b), None, key, post_flat=flat)
        # the mean: per-image sums in fixed point, so that from here on addition is exact
        t["sum"] += torch.round(sums.double() * _FIXED_POINT).long().sum(0)
        torch.maximum(t["max"], best.amax(0), out=t["max"])
        sy, sx = self.sketch.steps(h, w)
        sample = act[:, :, ::sy, ::sx] if (sy, sx) != (1, 1) else act
        torch.minimum(t["min"], sample.amin(dim=(0, 2, 3)), out=t["min"])
        codes = self.sketch.codes(sample)  # int32, (B, C, h', w')
        lo, hi = (int(v) for v in torch.aminmax(codes))
        span = hi - lo + 1
        # one bincount for all units: unit u's codes shifted into [u * span, (u + 1) * span)
        codes += (torch.arange(c, device=codes.device, dtype=torch.int32) * span - lo).view(1, c, 1, 1)
        counts = torch.bincount(codes.reshape(-1), minlength=c * span).view(c, span)
        half = self.sketch.half
        t["hist"][:, lo + half : hi + half + 1] += counts

    def _merge_top(self, t: dict, values: torch.Tensor, sums: torch.Tensor, ids: torch.Tensor,
                   pos: torch.Tensor | None, flat: torch.Tensor | None = None, post: torch.Tensor | None = None,
                   post_flat: torch.Tensor | None = None) -> None:
        """Merge candidates (C, N) into the running top-K of one layer, all units at once. Without
        ``pos``, candidate ``n`` is image ``n`` of ``flat`` (N, C, H*W), and the position of
        each candidate that enters the top-K is its map's first maximum (and its ``post``, for a
        layer ranked by the pre-activation, the output map ``post_flat`` at that position)."""
        k = t["values"].shape[1]
        all_v = torch.cat([t["values"], values], dim=1)
        all_s = torch.cat([t["sums"], sums], dim=1)
        all_i = torch.cat([t["ids"], ids], dim=1)
        order = _top_order(all_v, all_s, all_i, self.top_k)
        ranked_pre = "post" in t
        if pos is None:
            new_u, new_r = torch.nonzero(order >= k, as_tuple=True)
            all_p = torch.cat([t["pos"], torch.full_like(values, -1, dtype=torch.long)], dim=1)
            picked = all_p.gather(1, order)
            if ranked_pre:
                picked_post = torch.cat([t["post"], torch.full_like(values, float("-inf"))], dim=1).gather(1, order)
            if len(new_u):
                images = order[new_u, new_r] - k
                maps = flat[images, new_u]  # (n_new, H*W)
                at = maps.argmax(dim=1)  # the first maximum, as torch documents
                picked[new_u, new_r] = at
                if ranked_pre:
                    picked_post[new_u, new_r] = post_flat[images, new_u, at]
            t["pos"] = picked
            if ranked_pre:
                t["post"] = picked_post
        else:
            t["pos"] = torch.cat([t["pos"], pos], dim=1).gather(1, order)
            if ranked_pre:
                t["post"] = torch.cat([t["post"], post], dim=1).gather(1, order)
        t["values"] = all_v.gather(1, order)
        t["sums"] = all_s.gather(1, order)
        t["ids"] = all_i.gather(1, order)

    def merge(self, other: "ScanState") -> "ScanState":
        """Fold ``other`` (a scan of other images: ids must not overlap) into this state, in place;
        returns ``self``."""
        if other.shapes != self.shapes or other.top_k != self.top_k or other.sketch != self.sketch:
            raise ValueError(
                "cannot merge scans of different layers, top or sketch "
                f"({list(self.shapes)} top {self.top_k} vs {list(other.shapes)} top {other.top_k})"
            )
        if other.rank_by != self.rank_by:
            diff = [n for n in self.rank_by if other.rank_by[n] != self.rank_by[n]]
            raise ValueError(f"cannot merge scans ranked by different values (layers {', '.join(diff)}: "
                             f"{self.rank_by[diff[0]]} vs {other.rank_by[diff[0]]}); scan both with the same rank_by")
        for name, t in self.tensors.items():
            o = {k: v.to(self.device) for k, v in other.tensors[name].items()}
            self._merge_top(t, o["values"], o["sums"], o["ids"], o["pos"], post=o.get("post"))
            t["hist"] += o["hist"]
            t["sum"] += o["sum"]
            torch.minimum(t["min"], o["min"], out=t["min"])
            torch.maximum(t["max"], o["max"], out=t["max"])
        self.images += other.images
        return self

    # ------------------------------------------------------------------ reading

    def outputs(self, layer: str) -> torch.Tensor:
        """(C, K) on the CPU: the layer's output value of each top slot (``values`` for a layer
        ranked by its output, ``post`` for one ranked by its pre-activation); -inf: empty."""
        t = self.tensors[self._check(layer)]
        return t.get("post", t["values"]).cpu()

    def top(self, layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, ids, ys, xs), each (C, K) on the CPU, best first; empty slots have id -1.
        ``values`` are the ranking key: the pre-activation for a layer ranked by it
        (:meth:`outputs` gives the layer's output values)."""
        t = self.tensors[self._check(layer)]
        w = self.shapes[layer][2]
        pos = t["pos"].cpu()
        ys = torch.where(pos >= 0, pos // w, pos)
        xs = torch.where(pos >= 0, pos % w, pos)
        return t["values"].cpu(), t["ids"].cpu(), ys, xs

    def summary(self, layer: str, quantiles: Sequence[float] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)) -> dict:
        """Per-unit distribution summary of ``layer`` as CPU tensors: ``mean`` and ``max`` (C,)
        over all positions; over the sketch's sampled positions ``min`` (C,),
        ``frac_positive`` (C,) (share of values >= 2**-126), ``quantiles`` (C, Q) read at bin
        midpoints and clamped to [min, max] (rank ``floor(q * (n - 1))``, numpy's 'lower'),
        ``hist`` (C, bins) in value order and its ``edges`` (bins + 1,)."""
        t = {k: v.cpu() for k, v in self.tensors[self._check(layer)].items()}
        _c, h, w = self.shapes[layer]
        hist = t["hist"][:, self.sketch.order()]
        edges = self.sketch.edges()
        mids = self.sketch.mids()
        cum = hist.cumsum(1)
        total = cum[:, -1:]
        qs = torch.tensor(list(quantiles), dtype=torch.float64)
        ranks = torch.floor(qs.view(1, -1) * (total - 1).clamp(min=0)).long()
        bins = torch.searchsorted(cum, ranks, right=True).clamp(max=hist.shape[1] - 1)
        lo, hi = t["min"].double().view(-1, 1), t["max"].double().view(-1, 1)
        qv = torch.minimum(torch.maximum(mids[bins], lo), hi)
        qv = torch.where(total > 0, qv, torch.full_like(qv, float("nan")))
        return {
            "mean": t["sum"].double() / _FIXED_POINT / max(1, self.images * h * w),
            "min": t["min"],
            "max": t["max"],
            "frac_positive": hist[:, self.sketch.first_positive :].sum(1).double() / total.view(-1).clamp(min=1),
            "quantiles": qv,
            "quantile_levels": qs,
            "hist": hist,
            "edges": edges,
            "positions": self.sketch.positions(h, w),
        }

    def _check(self, layer: str) -> str:
        if layer not in self.shapes:
            from .errors import unknown_layer_error

            raise unknown_layer_error(layer, self.shapes)
        return layer

    # ------------------------------------------------------------------ serialization

    def state_dict(self) -> dict:
        """Plain data: ints, strings, lists and CPU tensors (safe for ``weights_only`` loading)."""
        return {
            "version": STATE_VERSION,
            "top": self.top_k,
            "images": self.images,
            "sketch": self.sketch.to_dict(),
            "layers": [[name, list(shape)] for name, shape in self.shapes.items()],
            "rank_by": dict(self.rank_by),
            "tensors": {name: {k: v.cpu().clone() for k, v in t.items()} for name, t in self.tensors.items()},
        }

    @classmethod
    def from_state_dict(cls, data: Mapping, device: torch.device | str = "cpu") -> "ScanState":
        if not isinstance(data, Mapping) or data.get("version") != STATE_VERSION:
            raise ConvscopeError(
                f"not a convscope scan state of version {STATE_VERSION} "
                f"(found {data.get('version') if isinstance(data, Mapping) else type(data).__name__}); rescan the images"
            )
        state = cls({name: shape for name, shape in data["layers"]}, int(data["top"]), device, Sketch(**data["sketch"]),
                    data.get("rank_by"))  # states from before the choice: all by output
        state.images = int(data["images"])
        for name, t in data["tensors"].items():
            for k, v in t.items():
                if k not in state.tensors[name] or tuple(v.shape) != tuple(state.tensors[name][k].shape):
                    raise ConvscopeError(f"scan state tensor {name}.{k} has shape {tuple(v.shape)}; the file is damaged")
                state.tensors[name][k] = v.to(state.device)
        return state

    def save(self, path: str | os.PathLike, extra: Mapping | None = None) -> None:
        """Write the state (and ``extra`` plain data) atomically (:func:`convscope.files.atomic_write`)."""
        with atomic_write(path) as f:
            torch.save({"state": self.state_dict(), "extra": dict(extra or {})}, f)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "ScanState":
        return cls.from_state_dict(load_checkpoint(path)["state"], device)

    def __eq__(self, other) -> bool:
        if not isinstance(other, ScanState):
            return NotImplemented
        if (self.shapes, self.top_k, self.images, self.sketch, self.rank_by) != (
                other.shapes, other.top_k, other.images, other.sketch, other.rank_by):
            return False
        return all(
            torch.equal(v.cpu(), other.tensors[name][k].cpu()) for name, t in self.tensors.items() for k, v in t.items()
        )

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"ScanState({len(self.shapes)} layers, top {self.top_k}, {self.images} images)"


def merge(*states: ScanState) -> ScanState:
    """A new state holding all of ``states`` (scans of disjoint images with global ids)."""
    if not states:
        raise ValueError("merge needs at least one scan state")
    out = ScanState.from_state_dict(states[0].state_dict(), states[0].device)
    for s in states[1:]:
        out.merge(s)
    return out


# --------------------------------------------------------------------------- the scan


@dataclasses.dataclass
class Example:
    """One of a unit's top images: ``value`` (the layer's output) at map position (``y``, ``x``),
    ``image_id`` (:meth:`Scan.image_id` of ``photo`` and ``crop``), ``path`` of the photo, and
    ``pre`` the pre-activation there where it ranks the layer (else None)."""

    rank: int
    image_id: int
    photo: int
    crop: int
    path: str
    value: float
    y: int
    x: int
    pre: float | None = None


@dataclasses.dataclass
class Scan:
    """What :func:`scan` returns: the :class:`ScanState`, the photo ``paths`` it numbered (crop
    ``c`` of ``paths[i]`` is image :meth:`image_id` ``(i, c)``), the ``layers`` (LayerInfo,
    network order), ``crops``, the ``skipped`` photos as (path, reason), the ``offset`` of
    ``paths[0]`` in a larger list, ``hashes``: the sha256 of the bytes scanned of every photo
    that is among the top examples (index into ``paths`` -> hex digest), and ``ranking``: per
    layer ranked by its pre-activation, its :class:`~convscope.saturation.Saturation`; ``done``:
    how many of ``paths`` the scan has gone through (scanned or skipped; fewer than
    ``len(paths)`` in a snapshot of a scan in progress, None where not counted).

    >>> result.image_id(*result.photo_of(412)) == 412
    True
    """

    state: ScanState
    paths: list[str]
    layers: list
    crops: Crops
    skipped: list[tuple[str, str]]
    offset: int = 0
    hashes: dict[int, str] = dataclasses.field(default_factory=dict)
    ranking: dict = dataclasses.field(default_factory=dict)
    done: int | None = None

    def ranked_by(self, layer: str) -> str:
        """What ranks ``layer``: ``"output"`` or ``"pre-activation (input of ReLU6 'bn1.act')"``."""
        if self.state.rank_by.get(layer) != "pre-activation":
            return "output"
        sat = self.ranking.get(layer)
        return describe_ranking(sat) if sat is not None else "pre-activation"

    @property
    def photos_scanned(self) -> int:
        return self.state.images // self.crops.count

    def image_id(self, photo: int, crop: int) -> int:
        """The image id of crop ``crop`` of ``paths[photo]``."""
        return self.crops.image_id(photo + self.offset, crop)

    def photo_of(self, image_id: int) -> tuple[int, int]:
        """(index into ``paths``, crop index) of an image id: the inverse of :meth:`image_id`."""
        photo, crop = self.crops.photo_crop(image_id)
        return photo - self.offset, crop

    def examples(self, layer: str, unit: int) -> list[Example]:
        keys, ids, ys, xs = self.state.top(layer)
        values = self.state.outputs(layer)
        if not 0 <= unit < values.shape[0]:
            raise ValueError(f"unit {unit} is out of range for layer {layer!r} (0..{values.shape[0] - 1})")
        by_pre = self.state.rank_by[layer] == "pre-activation"
        out = []
        for rank, (v, i, y, x) in enumerate(zip(values[unit].tolist(), ids[unit].tolist(), ys[unit].tolist(), xs[unit].tolist())):
            if i < 0:
                break
            photo, crop = self.photo_of(i)
            out.append(Example(rank, i, photo, crop, self.paths[photo], v, y, x, float(keys[unit, rank]) if by_pre else None))
        return out


def referenced_photos(state: ScanState, crops: Crops, offset: int) -> set[int]:
    """Indices (into the scan's paths) of the photos that some unit's top examples hold. A photo
    that has left every top-K never comes back (the merge only keeps the best), so the hashes
    of the others can go."""
    ids = torch.cat([t["ids"].reshape(-1) for t in state.tensors.values()])
    photos = torch.unique(ids[ids >= 0]).cpu() // crops.count - offset
    return set(photos.tolist())


def scan_batches(model, state: ScanState, paths: Sequence[str], names: Sequence[str], crops: Crops,
                 photos_per_batch: int, *, first_id_photo: int = 0, workers: int | None = None,
                 autocast: bool = False, pre: Mapping[str, str] | None = None) -> Iterator:
    """The scan's loop: ``paths`` decoded ``photos_per_batch`` at a time (and hashed), run
    through ``model`` with ``names`` hooked, and folded into ``state`` with image ids counted
    from photo ``first_id_photo``; yields each :class:`convscope.data.Batch` once it is in the
    state (its ``errors``, ``indices`` into ``paths`` and ``hashes``). ``pre``: for each layer
    the state ranks by its pre-activation, the dotted name of the activation module whose
    input that is (a forward pre-hook clones it, before an in-place activation overwrites it).
    The hooks come off when the generator ends or is closed (use it inside ``contextlib.closing``)."""
    from .data import iter_batches
    from .hooks import Handles, capture, named_modules, run

    pre = dict(pre or {})
    if sorted(pre) != sorted(state.pre_ranked):
        raise ValueError(f"pre names the activations of {sorted(pre)}, but the state ranks {state.pre_ranked} "
                         "by their pre-activation")
    transform = model.transform if crops.count == 1 else CropTransform(model.transform, crops)
    h, w = model.preprocessing.input_size
    use_autocast = autocast and model.device.type == "cuda"
    modules = named_modules(model.module) if pre else {}
    pre_maps: dict[str, torch.Tensor] = {}

    def keep(layer: str):
        def hook(_m, args):
            pre_maps[layer] = args[0].detach().clone()  # timm's ReLU6 works in place
        return hook

    with capture(model.module, list(names), stop=True) as outs, Handles() as handles:
        for layer, act in pre.items():
            handles.add(modules[act].register_forward_pre_hook(keep(layer)))
        for batch in iter_batches(paths, transform, batch_size=photos_per_batch, workers=workers, sha256=True):
            if batch.indices:
                x = batch.tensors.reshape(-1, 3, h, w).to(model.device, non_blocking=True)
                photo = torch.tensor(batch.indices, dtype=torch.long) + first_id_photo
                ids = crops.image_id(photo.view(-1, 1), torch.arange(crops.count)).view(-1)
                with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=use_autocast):
                    run(model.module, x, outs)  # raises LayerNotRunError for a layer not reached
                    state.update(outs, ids, **({"pre": pre_maps} if pre else {}))
                outs.clear()
                pre_maps.clear()
            yield batch


def scan(
    model,
    images: Iterable[str | os.PathLike],
    layers: Sequence[str] | str | None = None,
    top: int = 9,
    *,
    crops=None,
    batch_size: int = 32,
    workers: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    offset: int = 0,
    autocast: bool = False,
    progress: bool | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    rank_by: str = "auto",
    on_batch: Callable[[Scan], None] | None = None,
) -> Scan:
    """Scan photos through ``model`` once, keeping each unit's ``top`` images in ``layers``.

    ``images`` are files, folders, globs or ``@LIST`` files (as ``classify`` takes them), each
    preprocessed with the model's own transform and hashed (sha256) from the same bytes; bad
    files are skipped and listed in ``Scan.skipped``. ``layers`` are dotted names (default: the catalogue's default selection);
    all are hooked at once and the forward pass stops after the deepest. ``crops`` adds grid
    crops per photo (:class:`Crops`). ``batch_size`` counts model inputs (crops included).

    With ``checkpoint`` (a file path) the state is saved atomically every ``checkpoint_every``
    photos (rounded up to whole batches); ``resume=True`` continues from it and gives exactly
    the result of an uninterrupted run. ``offset`` is the index of the first photo in a larger
    list, for scans split across machines and merged with :func:`merge`. ``autocast`` runs the
    forward pass in bfloat16 on CUDA (not exact). ``rank_by``: what ranks each layer's top
    images (:func:`convscope.scan_settings.ranking`): ``"auto"`` the input of a saturating
    activation that ends the layer (ReLU6) and the output elsewhere, ``"output"`` the output
    everywhere, ``"pre-activation"`` the pre-activation everywhere (an error for a layer
    without a saturating activation). ``on_batch(partial)``, after every batch: a :class:`Scan`
    of the first ``partial.done`` photos, on the live state (read it before returning).

    >>> result = scan(load_model(), ["photos/"], top=9)
    >>> result.examples(result.state.layers[0], 0)
    """
    from .data import expand_inputs
    from .progress import Bar
    from .runtime import keep_freed_memory

    keep_freed_memory()  # big batches reuse freed memory instead of page-faulting (see runtime)

    check_arguments(top, batch_size, checkpoint_every)
    crops = Crops.parse(crops)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    paths_p, missing = expand_inputs(images)
    paths = [str(p) for p in paths_p]
    infos = model.layers.select(layers)
    if not infos:
        raise ValueError("no layers to scan; name some with layers=[...] (run `convscope layers`)")
    names = [i.name for i in infos]
    sats = ranking(model.module, names, rank_by, tuple(model.preprocessing.input_size))
    choices = rank_choices(sats)
    photos_per_batch = max(1, batch_size // crops.count)
    every = -(-checkpoint_every // photos_per_batch) * photos_per_batch
    settings = checkpoint_config(model.spec, model.weights, model.preprocessing.input_size, names, top, crops,
                      photos_per_batch, offset, paths, choices)
    skipped: list[tuple[str, str]] = [(e.path, e.reason) for e in missing]
    hashes: dict[int, str] = {}
    start = 0
    state = None
    data = resume_from(checkpoint, settings) if resume else None
    if data is not None:
        extra = data["extra"]
        state = ScanState.from_state_dict(data["state"], model.device)
        start = int(extra["next"])
        skipped = [tuple(s) for s in extra["skipped"]]
        hashes = {int(i): str(h) for i, h in extra.get("hashes", {}).items()}  # older checkpoints: none
    if state is None:
        state = ScanState({i.name: i.shape for i in infos}, top, model.device, rank_by=choices)
    if on_skip is not None:
        for p, r in skipped:
            on_skip(p, r)

    def save(next_index: int) -> None:
        if checkpoint is not None:
            with disk_full_as_error(checkpoint, RESUME_HINT):  # the checkpoint before this one is whole
                state.save(checkpoint, {"config": settings, "next": next_index, "skipped": [list(s) for s in skipped],
                                        "hashes": dict(hashes)})

    if checkpoint is not None:  # a killed run's half-written checkpoint, beside the whole one
        remove_stale_temps(Path(checkpoint).parent, name=Path(checkpoint).name, recursive=False)

    done = start
    last_saved = start
    with Bar(len(paths), "scanning", disable=None if progress is None else not progress) as bar:
        bar.advance(start)
        batches = scan_batches(model, state, paths[start:], names, crops, photos_per_batch,
                               first_id_photo=start + offset, workers=workers, autocast=autocast,
                               pre={n: s.activation for n, s in sats.items() if s is not None})
        with contextlib.closing(batches):
            for batch in batches:
                for err in batch.errors:
                    skipped.append((err.path, err.reason))
                    if on_skip is not None:
                        on_skip(err.path, err.reason)
                hashes.update((start + i, digest) for i, digest in zip(batch.indices, batch.hashes))
                n = len(batch.indices) + len(batch.errors)
                done += n
                bar.advance(n)
                if on_batch is not None:
                    on_batch(Scan(state, paths, infos, crops, list(skipped), offset, dict(hashes),
                                  {n: s for n, s in sats.items() if s is not None}, done=done))
                if done - last_saved >= every and done < len(paths):
                    hashes = {p: hashes[p] for p in referenced_photos(state, crops, offset) if p in hashes}
                    save(done)
                    last_saved = done
    hashes = {p: hashes[p] for p in sorted(referenced_photos(state, crops, offset)) if p in hashes}
    save(len(paths))
    return Scan(state, paths, infos, crops, skipped, offset, hashes, {n: s for n, s in sats.items() if s is not None},
                done=len(paths))


__all__ = [
    "Crops", "Example", "RANK_BY", "Scan", "ScanState", "Sketch", "check_arguments", "checkpoint_config",
    "fingerprint", "merge", "referenced_photos", "resume_from", "scan", "scan_batches",
]
