"""Precision of the everyday words (``convscope/vocab/everyday.json``) on the dev photos.

For each word with classes, its score on a photo is the sum of the index's stored probabilities
of the word's classes (as keyword search scores a word: ``keyword_scores``). Its hits at a
cut-off are the photos scoring at least that, best first, the first ``--top``. A hit is right
when the photo's TRUE label (the labels file beside the photos) is one of the word's classes
("strict"), or also a class or a photo judged by eye to answer the word (:data:`JUDGED`: data
of this bench, not of the product table; "judged"). Precision is right hits over hits, per word
with any hit, and their mean. Recall: of the dev photos whose true label is one of the word's
classes (at most ``--top``), the share among its hits.

    python bench/words.py --index /tmp/words-dev.index                 # builds the index if missing
    python bench/words.py --index /tmp/words-dev.index --sheets /tmp/words-sheets

``--sheets DIR`` writes a contact sheet per word (its top hits at the lowest cut-off, with the
true label and score; green: right, red: wrong) to look at. The dev photos are one per even
class index: a class with an odd index has no photo here, so it is not measured.
"""
from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from _trees import ROOT, dev_photos_dir

from convscope.index.search import keyword_scores
from convscope.index.store import IndexStore
from convscope.vocab import EverydayWords

#: Judged by a person who looked at the contact sheets (data of this bench, not of the product
#: table): per word, the classes that fit it although the table does not map them (labels), and
#: single photos that answer it whatever their label (file names: a man with his catch on a
#: beach is labelled "hammerhead"). A hit counted by these is "judged"; "strict" counts only
#: photos whose true label is one of the word's mapped classes.
JUDGED: dict[str, set[str]] = {
    "people": {"n01494475_hammerhead.JPEG", "n04041544_radio.JPEG", "n04485082_tripod.JPEG",
               "n03495258_harp.JPEG"},  # a man on a beach, a soldier, a man, a concert audience
    "beach": {"n01494475_hammerhead.JPEG", "n09399592_promontory.JPEG"},  # both show a beach
    "architecture": {"vault"},  # a vaulted arcade
    "bathroom": {"n04493381_tub.JPEG"},  # a bathtub
    "graduation": {"n03617480_kimono.JPEG"},  # a woman in an academic robe
    "military": {"n04041544_radio.JPEG", "n04008634_projectile.JPEG"},  # a soldier; a missile
    "tv": {"screen"},  # a screen (CRT monitor) is a TV-like set
    "meal": {"n01983481_American_lobster.JPEG"},  # a plated lobster dish
    "cycling": {"n04482393_tricycle.JPEG"},  # a man riding a tall bicycle
    "wine": {"red wine"},  # a bottle of red wine
    "workshop": {"hatchet"},  # a hatchet is a workshop tool too
}
CUTOFFS = (0.1, 0.2)
THUMB = 128


def true_labels(dev: Path, store: IndexStore) -> np.ndarray:
    """(N,) int: per index entry, the true class index of its photo (-1 if not in the labels)."""
    rows = csv.DictReader(open(dev.parent / f"{dev.name}-labels.tsv"), delimiter="\t")
    by_name = {r["file"]: int(r["class_index"]) for r in rows}
    files = store.files()
    return np.array([by_name.get(Path(files[int(f)]["path"]).name, -1) for f in store.entry_file])


def measure(words: EverydayWords, store: IndexStore, truth: np.ndarray, top: int) -> list[dict]:
    labels = store.labels
    files = store.files()
    names = [Path(files[int(f)]["path"]).name for f in store.entry_file]
    out = []
    for word, entry in sorted(words.entries.items()):
        if not entry.reasons:
            continue
        scores = keyword_scores(store, sorted(entry.reasons))
        judged = JUDGED.get(word, set())
        fits = set(entry.reasons) | {i for i, name in enumerate(labels) if name in judged}
        present = int(np.isin(truth, sorted(entry.reasons)).sum())
        row = {"word": word, "classes": len(entry.reasons), "present": present, "scores": scores,
               "good": [int(truth[i]) in fits or names[i] in judged for i in range(len(truth))]}
        for cut in CUTOFFS:
            hits = [int(i) for i in np.argsort(-scores, kind="stable")[:top] if scores[i] >= cut]
            strict = sum(int(truth[i]) in entry.reasons for i in hits)
            row[cut] = (len(hits), strict, sum(row["good"][i] for i in hits))
        out.append(row)
    return out


def sheet(store: IndexStore, truth: np.ndarray, row: dict, top: int, path: Path) -> None:
    """The word's top hits (score >= the lowest cut-off), each with its true label and score."""
    scores = row["scores"]
    hits = [int(i) for i in np.argsort(-scores, kind="stable")[:top] if scores[i] >= min(CUTOFFS)]
    cols = 6
    rows = max(1, -(-len(hits) // cols))
    im = Image.new("RGB", (cols * (THUMB + 8), 24 + rows * (THUMB + 30)), "white")
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    draw.text((4, 4), f"{row['word']}: {len(hits)} hits >= {min(CUTOFFS)}, {row['classes']} classes", fill="black", font=font)
    for k, entry in enumerate(hits):
        x, y = (k % cols) * (THUMB + 8) + 4, 24 + (k // cols) * (THUMB + 30)
        with Image.open(io.BytesIO(store.thumbnail(entry))) as t:
            t = t.convert("RGB")
            t.thumbnail((THUMB, THUMB))
            im.paste(t, (x, y))
        ok = row["good"][entry]
        draw.rectangle([x - 2, y - 2, x + THUMB + 1, y + THUMB + 1], outline="green" if ok else "red", width=2)
        label = store.labels[truth[entry]] if truth[entry] >= 0 else "?"
        draw.text((x, y + THUMB + 3), f"{label[:20]}", fill="black", font=font)
        draw.text((x, y + THUMB + 15), f"{scores[entry]:.2f}", fill="black", font=font)
    im.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", default="/tmp/words-dev.index", help="a dev index (built if missing)")
    parser.add_argument("--dev", type=Path, default=dev_photos_dir())
    parser.add_argument("--top", type=int, default=12, help="hits looked at per word")
    parser.add_argument("--sheets", type=Path, help="write a contact sheet per word here")
    args = parser.parse_args()
    if not (Path(args.index) / "index.sqlite").is_file():
        subprocess.run([sys.executable, "-m", "convscope", "index", str(args.dev), "--out", args.index],
                       check=True, cwd=ROOT)
    words = EverydayWords.load()
    with IndexStore.open(args.index) as store:
        truth = true_labels(args.dev, store)
        rows = measure(words, store, truth, args.top)
        if args.sheets:
            args.sheets.mkdir(parents=True, exist_ok=True)
            for row in rows:
                sheet(store, truth, row, args.top, args.sheets / f"{row['word'].replace(' ', '_')}.png")
    head = "".join(f"  hits@{c}  strict  judged  recall" for c in CUTOFFS)
    print(f"{'word':17s} classes  dev photos{head}")
    for row in rows:
        cells = ""
        for c in CUTOFFS:
            n, strict, judged = row[c]
            recall = f"{strict / min(row['present'], args.top):.2f}" if row["present"] else "-"
            cells += f"  {n:7d}  " + (f"{strict / n:6.2f}  {judged / n:6.2f}" if n else f"{'-':>6s}  {'-':>6s}") \
                + f"  {recall:>6s}"
        print(f"{row['word']:17s} {row['classes']:7d}  {row['present']:10d}{cells}")
    for c in CUTOFFS:
        scored = [r[c] for r in rows if r[c][0]]
        hits = sum(n for n, _, _ in scored)
        strict = sum(s for _, s, _ in scored)
        judged = sum(j for _, _, j in scored)
        print(f"cut-off {c}: {len(scored)} words with hits; mean precision strict "
              f"{np.mean([s / n for n, s, _ in scored]):.3f}, judged {np.mean([j / n for n, _, j in scored]):.3f}; "
              f"pooled strict {strict}/{hits} = {strict / hits:.3f}, judged {judged}/{hits} = {judged / hits:.3f}")
    unseen = sum(1 for e in words.entries.values() if e.unseen is not None)
    print(f"{len(rows)} words with classes, {unseen} unseen; {len(words.words)} words and forms in all")


if __name__ == "__main__":
    main()
