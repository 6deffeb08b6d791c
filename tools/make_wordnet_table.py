"""Write ``convscope/vocab/wordnet_imagenet.json``: the part of WordNet 3.0 that search needs.

Run from the repository root, on a machine with Debian's ``wordnet-base`` installed::

    python tools/make_wordnet_table.py

It reads the WNDB files under ``/usr/share/wordnet/`` (only here: nothing in the package reads
them at run time) and writes, with WordNet's licence text:

- every noun synset that is one of the 1,000 ImageNet-1k classes or one of their ancestors
  through hypernym (``@``) and instance-hypernym (``@i``) pointers, all parents kept;
  for each: its lemmas in WordNet order (spaces for ``_``), its parent ids, and for a class its
  index and its label as convscope shows it (checked against ``convscope.models.imagenet_labels``);
- the entries of ``noun.exc`` (irregular plurals: "mice mouse") whose base form is a lemma there.

An ImageNet class id ``nXXXXXXXX`` is ``n`` and the 8-digit offset of its synset in ``data.noun``.
The class order is timm's ``ImageNetInfo`` (the standard index order). The generator prints the
table's size and how many classes the album categories of :mod:`convscope.vocab.albums` cover.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "convscope" / "vocab" / "wordnet_imagenet.json"
COMMAND = "python tools/make_wordnet_table.py"
PARENT_POINTERS = ("@", "@i")  # hypernym, instance hypernym


def read_data_noun(path: Path) -> tuple[str, dict[str, tuple[list[str], list[str]]]]:
    """The licence header and ``{wnid: (lemmas, parent wnids)}`` for every noun synset.

    A data line is ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt
    [pointer_symbol offset pos source/target...] | gloss``, ``w_cnt`` in hex and ``p_cnt`` in
    decimal. The licence lines come first, each starting with two spaces and its line number.
    """
    licence, synsets = [], {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                licence.append(re.sub(r"^\s+\d+ ?", "", line).rstrip())
                continue
            fields = line.split(" | ", 1)[0].split()
            offset, w_cnt = fields[0], int(fields[3], 16)
            lemmas = [fields[4 + 2 * k].replace("_", " ") for k in range(w_cnt)]
            at = 4 + 2 * w_cnt
            p_cnt = int(fields[at])
            pointers = [fields[at + 1 + 4 * k: at + 5 + 4 * k] for k in range(p_cnt)]
            parents = [f"n{off}" for sym, off, pos, _ in pointers if sym in PARENT_POINTERS and pos == "n"]
            synsets[f"n{offset}"] = (lemmas, parents)
    return "\n".join(licence).strip() + "\n", synsets


def read_exceptions(path: Path) -> dict[str, list[str]]:
    """``noun.exc``: ``inflected base [base...]`` a line, ``_`` for spaces."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) >= 2:
            out[words[0].replace("_", " ")] = [w.replace("_", " ") for w in words[1:]]
    return out


def imagenet_wnids() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_label_name(i) for i in range(info.num_classes())]


def closure(classes: list[str], synsets: dict) -> list[str]:
    """The classes and all their ancestors, sorted by id."""
    seen, todo = set(), list(classes)
    while todo:
        wnid = todo.pop()
        if wnid not in seen:
            seen.add(wnid)
            todo.extend(synsets[wnid][1])
    return sorted(seen)


def wordnet_version() -> str:
    try:
        deb = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "wordnet-base"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # not a Debian system: say only the version
        return "WordNet 3.0"
    return f"WordNet 3.0 (Debian wordnet-base {deb})"


def build() -> dict:
    from convscope.models import imagenet_labels  # generation time only: it imports timm and torch

    licence, synsets = read_data_noun(WORDNET / "data.noun")
    wnids = imagenet_wnids()
    labels = imagenet_labels()
    index = {w: i for i, w in enumerate(wnids)}
    table = {}
    for wnid in closure(wnids, synsets):
        lemmas, parents = synsets[wnid]
        entry = {"lemmas": lemmas, "parents": parents}
        if wnid in index:
            entry["class"] = index[wnid]
            entry["label"] = labels[index[wnid]]
            if entry["label"] != lemmas[0]:
                print(f"note: class {index[wnid]} {wnid}: label {entry['label']!r}, "
                      f"first lemma {lemmas[0]!r}", file=sys.stderr)
        table[wnid] = entry
    keys = {lemma.lower() for e in table.values() for lemma in e["lemmas"]}
    exceptions = {form: bases for form, bases in read_exceptions(WORDNET / "noun.exc").items()
                  if any(b.lower() in keys for b in bases)}
    return {
        "wordnet": wordnet_version(),
        "generator": COMMAND,
        "source": "/usr/share/wordnet/data.noun, noun.exc",
        "licence": licence,
        "synsets": table,
        "exceptions": dict(sorted(exceptions.items())),
    }


def dump(doc: dict, tables: tuple[str, ...] = ("synsets", "exceptions")) -> str:
    """JSON with one entry of each of ``tables`` a line (one synset, one exception), so that a
    regeneration diffs readably; the other keys of ``doc`` come first, one a line."""
    head = {k: v for k, v in doc.items() if k not in tables}
    lines = ["{"] + [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
    for name in tables:
        rows = [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in doc[name].items()]
        lines += [f"{json.dumps(name)}: {{", ",\n".join(rows), "},"]
    lines[-1] = "}"
    return "\n".join(lines) + "\n}\n"


def main() -> None:
    doc = build()
    text = dump(doc)
    json.loads(text)  # the hand-made layout must still be JSON
    OUT.write_text(text, encoding="utf-8")
    n = len(doc["synsets"])
    print(f"wrote {OUT.relative_to(ROOT)}: {n} synsets, {len(doc['exceptions'])} plural exceptions, "
          f"{len(text.encode()) / 1024:.0f} KiB")

    from convscope.vocab.albums import coverage

    for album, count in coverage().items():
        print(f"  {count:4d}  {album}")


if __name__ == "__main__":
    main()
