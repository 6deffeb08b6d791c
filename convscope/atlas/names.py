"""Unit names: what most of a unit's top examples are, by WordNet class or taught concept, with
the share and how likely that share is by luck.

Network Dissection names units with a pixel-annotated data set. An atlas has no annotations,
only its units' top examples; but each example is on a model input that the classifier can
label. So a unit is named by what its top examples' *images* are:

1. **Labels per image.** The naming step (:func:`name_atlas`) reads every example image again
   (its sha256 checked, as the build does), runs the model on it (the same crop, the same
   preprocessing) and keeps its :data:`TOP` most probable classes. An image *is* a WordNet synset
   ``s`` (a class or any of its ancestors: "golden retriever", "dog", "animal") when the
   probabilities of its classes under ``s`` add up to at least :data:`CONFIDENT` (so a photo the
   classifier splits between two retrievers is still a dog).
2. **The rule** (:func:`name_unit`), for one unit with ``n`` top examples (unreadable ones count
   as sharing nothing), each with its set of labels: ``count(s)`` is how many share ``s``, and
   ``base(s)`` the share of all the atlas's example images that are ``s``. ``s`` *names* the unit
   when ``count(s)`` is at least the layer's share (:func:`needed`: more than half for a layer that
   sees the whole input, :data:`PARTIAL_SHARE` for one that sees a part) and ``count(s)`` or
   more of ``n`` is unlikely by luck: the binomial tail ``P(X >= count | n, base(s))`` is at most
   :data:`ALPHA` (this keeps "animal", which 4 or 5 of any 9 ImageNet photos are, from naming
   anything). Of the synsets that qualify, the one least likely by luck names it, which weighs
   share against breadth: "golden retriever" for 6 of 9 of one breed (a breed is 0.1% of
   ImageNet), "dog" for 7 of 9 dogs of different breeds rather than "hunting dog" for 5 of them,
   "bird" for 7 of 9 birds rather than "animal" for all 9; ties go to the more specific (the fewer
   ImageNet classes under it). An unnamed unit keeps its *closest* label, the least likely by
   luck of those two or more examples share, so a page can say what it nearly is.
3. **Patch-level caution.** A unit whose receptive field is smaller than the input responds to a
   part of each photo (an edge, a texture), and a photo's class is weak evidence of what that
   part is; such layers need :data:`PARTIAL_SHARE`, and their pages say so.

The rule takes labels from any source: :func:`name_unit` is given, per example, a set of keys
(synset ids here; a taught concept's name for the examples it holds) with each key's base rate
and specificity. Taught concepts live in an index (:mod:`convscope.index`), not in an atlas; a
caller that has them names units with ``source="concept"`` through :func:`name_units`.

>>> atlas = Atlas.open("atlas/")
>>> name_atlas(atlas, load_model())            # `convscope atlas name atlas/`
>>> atlas.unit_names("blocks.4")[17]
{'layer': 'blocks.4', 'unit': 17, 'source': 'wordnet', 'named': True, 'key': 'n02084071',
 'name': 'dog', 'count': 7, 'total': 9, 'base': 0.12, 'chance': 2.1e-05}
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Collection, Mapping, Sequence

import torch

from ..errors import ImageError
from ..hooks import model_lock
from ..progress import Bar
from ..stores import writer_lock
from ..vocab import Vocabulary
from .store import Atlas

#: Classes kept per example image.
TOP = 10
#: The probability an image's classes under a synset must add up to for the image to be one.
CONFIDENT = 0.5
#: The highest chance (binomial tail at the base rate) of a name's share by luck.
ALPHA = 1e-3
#: The share a name needs in a layer whose receptive field is smaller than the model input.
PARTIAL_SHARE = 2 / 3
WORDNET = "wordnet"
CONCEPT = "concept"


@dataclasses.dataclass(frozen=True)
class UnitName:
    """One unit's name, or (``named`` False) its closest label: ``key`` (a synset id or a
    concept's name; None when no two examples share a label), ``count`` of ``total`` top
    examples share it, ``base`` the share of all example images that have it, ``chance`` the
    probability of ``count`` or more of ``total`` by luck at that rate."""

    named: bool
    key: str | None
    count: int
    total: int
    base: float | None
    chance: float | None


def chance(count: int, total: int, base: float) -> float:
    """The binomial upper tail: the probability that ``count`` or more of ``total`` independent
    draws have a label that a ``base`` share of the images have."""
    base = min(max(base, 0.0), 1.0)
    return min(1.0, sum(math.comb(total, k) * base ** k * (1 - base) ** (total - k) for k in range(count, total + 1)))


def needed(total: int, whole_field: bool) -> int:
    """The examples of ``total`` a name needs: more than half where the layer sees the whole
    input, at least :data:`PARTIAL_SHARE` of them where it sees a part."""
    if whole_field:
        return total // 2 + 1
    return max(total // 2 + 1, math.ceil(PARTIAL_SHARE * total - 1e-9))


def name_unit(labels: Sequence[Collection[str]], base: Mapping[str, float], size: Mapping[str, int],
              *, need: int, alpha: float = ALPHA) -> UnitName:
    """Name one unit from its top examples' ``labels`` (per example, the set of keys it has,
    from any source: synset ids, concept names; an empty set for an example with none).
    ``base``: each key's share of all the example images; ``size``: each key's breadth (the
    ImageNet classes under a synset; 1 for a concept), the smaller the more specific. ``need``:
    the examples a name needs (:func:`needed`); ``alpha``: the highest chance by luck.

    Named: of the keys that at least ``need`` examples share with a chance by luck of at most
    ``alpha``, the least likely by luck (ties: the more specific, then the key). Unnamed: the key
    least likely by luck among those two or more examples share (ties: the same).

    >>> name_unit([{"dog", "animal"}] * 7 + [{"cat", "animal"}] * 2, {"dog": .1, "cat": .1, "animal": .5},
    ...           {"dog": 118, "cat": 5, "animal": 398}, need=5).key
    'dog'
    """
    total = len(labels)
    counts: dict[str, int] = {}
    for keys in labels:
        for key in set(keys):
            counts[key] = counts.get(key, 0) + 1
    shared = {k: c for k, c in counts.items() if c >= 2}
    if not shared:
        return UnitName(False, None, max(counts.values(), default=0), total, None, None)
    odds = {k: chance(c, total, base.get(k, 0.0)) for k, c in shared.items()}
    fits = [k for k, c in shared.items() if c >= need and odds[k] <= alpha]
    key = min(fits or shared, key=lambda k: (odds[k], size.get(k, 1), k))
    return UnitName(bool(fits), key, shared[key], total, base.get(key, 0.0), odds[key])


def name_units(atlas: Atlas, labels: Mapping[int, Collection[str]], size: Mapping[str, int],
               display: Callable[[str], str], source: str) -> list[dict]:
    """Name every unit of ``atlas`` from per-image ``labels`` ({image id: keys}; an image not in
    it has none), with each key's ``size`` (:func:`name_unit`) and ``display`` name; the base
    rates are the keys' shares of the atlas's example images. Records as
    :meth:`Atlas.unit_names` gives them, for :meth:`Atlas.set_names`."""
    images = [i["image_id"] for i in atlas.images()]
    base: dict[str, float] = {}
    for i in images:
        for key in labels.get(i, ()):
            base[key] = base.get(key, 0.0) + 1 / len(images)
    input_size = tuple((atlas.info()["preprocessing"] or {}).get("input_size") or (0, 0))
    out = []
    for layer in atlas.layers:
        whole = whole_field(atlas.layer(layer)["receptive_field"], input_size)
        for unit, ids in sorted(atlas.example_images(layer).items()):
            found = name_unit([labels.get(i, ()) for i in ids], base, size, need=needed(len(ids), whole))
            out.append({"layer": layer, "unit": unit, "source": source, "named": found.named, "key": found.key,
                        "name": None if found.key is None else display(found.key), "count": found.count,
                        "total": found.total, "base": found.base, "chance": found.chance})
    return out


def whole_field(receptive_field: Sequence[int], input_size: Sequence[int]) -> bool:
    """Whether a layer's units see the whole model input (their field at least its size)."""
    return len(input_size) == 2 and all(f >= s > 0 for f, s in zip(receptive_field, input_size))


# --------------------------------------------------------------------------- WordNet labels


def synset_labels(top: Sequence[tuple[int, float]], vocab: Vocabulary, ancestors: Sequence[frozenset[str]],
                  confident: float = CONFIDENT) -> frozenset[str]:
    """The synsets an image is: those whose classes among its ``top`` (class, probability) add
    up to ``confident`` or more (``ancestors[c]``: class ``c``'s synset and its ancestors)."""
    mass: dict[str, float] = {}
    for c, p in top:
        for wnid in ancestors[c]:
            mass[wnid] = mass.get(wnid, 0.0) + p
    return frozenset(w for w, m in mass.items() if m >= confident - 1e-9)


def classify_images(atlas: Atlas, model, batch_size: int = 32, top: int = TOP) -> tuple[dict, list[tuple[str, str]]]:
    """The ``top`` classes (class, probability) of every example image of ``atlas``, by image id:
    each photo read again (its sha256 checked against the scan's), cut to the image's crop and
    preprocessed with the model's transform, ``batch_size`` inputs per forward pass. Returns
    them and the photos that could not be read again (path, reason)."""
    from ..data import load_image_hashed

    by_photo: dict[str, list[dict]] = {}
    for image in atlas.images():
        by_photo.setdefault(image["path"], []).append(image)
    classes: dict[int, list[tuple[int, float]]] = {}
    unreadable: list[tuple[str, str]] = []
    pending: list[tuple[int, torch.Tensor]] = []

    def run() -> None:
        batch = torch.stack([t for _, t in pending]).to(model.device)
        with model_lock(model.module), torch.inference_mode():
            probs = torch.softmax(model.module(batch).float(), dim=1)
        values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
        for (i, _), v, c in zip(pending, values.tolist(), indices.tolist()):
            classes[i] = list(zip(c, v))
        pending.clear()

    with Bar(len(by_photo), "naming units") as bar:
        for path, images in by_photo.items():
            bar.advance()
            try:
                img, sha256 = load_image_hashed(path)
            except ImageError as exc:
                unreadable.append((path, exc.reason))
                continue
            if images[0]["sha256"] is not None and sha256 != images[0]["sha256"]:
                unreadable.append((path, "changed since the scan (its sha256 differs)"))
                continue
            for image in images:
                window = image["window"] or atlas.crop_window(image["crop"], *img.size)  # patches cut on demand: none yet
                pending.append((image["image_id"], model.transform(img.crop(tuple(window)))))
                if len(pending) >= batch_size:
                    run()
            del img
        if pending:
            run()
    return classes, unreadable


def imagenet_reason(model) -> str | None:
    """Why WordNet cannot name ``model``'s classes (they are not ImageNet-1k's), or None."""
    if list(model.labels) != Vocabulary.load().labels:
        return (f"the model's {len(model.labels)} classes are not ImageNet's 1,000, so WordNet cannot name them "
                "(a taught concept can)")
    return None


def name_atlas(atlas: Atlas, model, batch_size: int = 32) -> dict:
    """Name the units of ``atlas`` by WordNet (the module's rule) with ``model``, the model it
    was built with, and write the names into it (:meth:`Atlas.set_names`), holding the atlas's
    writer lock. Returns the naming record (:meth:`Atlas.naming`): with ``available`` False and
    a ``reason`` where the model's classes are not ImageNet's, and no names written."""
    record = {"model": model.describe().get("spec"),
              "rule": {"top": TOP, "confident": CONFIDENT, "alpha": ALPHA, "partial_share": round(PARTIAL_SHARE, 4)}}
    reason = imagenet_reason(model)
    with writer_lock(atlas.root, kind="atlas"):
        if reason is not None:
            record.update(available=False, reason=reason, classified=0, unreadable=[])
            atlas.set_names({}, [], record)
            return record
        vocab = Vocabulary.load()
        ancestors = [vocab.ancestors(c) for c in range(len(vocab.class_wnids))]
        size: dict[str, int] = {}
        for up in ancestors:
            for wnid in up:
                size[wnid] = size.get(wnid, 0) + 1
        classes, unreadable = classify_images(atlas, model, batch_size)
        labels = {i: synset_labels(top, vocab, ancestors) for i, top in classes.items()}
        names = name_units(atlas, labels, size, lambda w: vocab.synsets[w].name, WORDNET)
        record.update(available=True, classified=len(classes),
                      unreadable=[{"path": p, "reason": r} for p, r in unreadable])
        atlas.set_names(classes, names, record)
    return record


def word_units(atlas: Atlas, word: str, layer: str | None = None) -> list[dict]:
    """The units whose top examples are mostly ``word`` (a WordNet word as search reads it:
    "dog", "retrievers", "vehicle"): for each, the count of its top examples whose image is
    one (:func:`synset_labels`), of its total, and its name record; those with the share a name
    needs in their layer (:func:`needed`), most first. An atlas never named has none."""
    vocab = Vocabulary.load()
    senses = set(vocab.classes_for(word).senses)
    classes = atlas.image_classes()
    ancestors = {}
    hits: dict[int, bool] = {}
    for i, top in classes.items():
        for c, _p in top:
            if c not in ancestors:
                ancestors[c] = vocab.ancestors(c)
        hits[i] = not senses.isdisjoint(synset_labels(top, vocab, ancestors))
    base = sum(hits.values()) / len(hits) if hits else 0.0
    names = {(n["layer"], n["unit"]): n for n in atlas.unit_names(layer, WORDNET)}
    input_size = tuple((atlas.info()["preprocessing"] or {}).get("input_size") or (0, 0))
    out = []
    for name in ([layer] if layer is not None else atlas.layers):
        whole = whole_field(atlas.layer(name)["receptive_field"], input_size)
        for unit, ids in sorted(atlas.example_images(name).items()):
            count = sum(hits.get(i, False) for i in ids)
            if classes and count >= needed(len(ids), whole):
                out.append({"layer": name, "unit": unit, "word": word, "count": count, "total": len(ids),
                            "base": base, "chance": chance(count, len(ids), base),
                            "name": names.get((name, unit))})
    out.sort(key=lambda r: (-r["count"] / r["total"], r["chance"], atlas.layers.index(r["layer"]), r["unit"]))
    return out


__all__ = ["ALPHA", "CONCEPT", "CONFIDENT", "PARTIAL_SHARE", "TOP", "UnitName", "WORDNET", "chance",
           "classify_images", "imagenet_reason", "name_atlas", "name_unit", "name_units", "needed",
           "synset_labels", "whole_field", "word_units"]
