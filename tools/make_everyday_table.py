"""Write ``convscope/vocab/everyday.json``: the words people type into photo apps, each mapped
to the ImageNet classes that are evidence for it, with why.

Run from the repository root, on a machine with Debian's ``wordnet-base`` installed::

    python tools/make_everyday_table.py

Two sources, each mapping written with its own:

- WordNet 3.0 relations beyond hypernyms (``/usr/share/wordnet/data.noun``, read with
  ``make_wordnet_table``'s reader): from each sense that ``tools/everyday_words.py`` names for a
  word, and from every kind of it (hyponyms), its part/whole (``%p #p``), member (``%m #m``),
  substance (``%s #s``), topic-domain (``;c -c``) and derivation (``+``) pointers to a synset
  that is an ImageNet class or has classes under it (at most ``BROAD``); the classes under the sense itself count
  too ("wordnet:kind-of"). The reason is the path: "a beach is part of a shore; a seashore is a
  kind of shore". What such a path reaches but is no evidence is dropped in the source, with why.
- The reviewed table ``tools/everyday_words.py`` for the rest, with a reason each, and the words
  that this network has no class for (``unseen``).

Irregular plurals of the words come from ``noun.exc``; regular ones are read at run time by the
suffix rules of :func:`convscope.vocab.wordnet.base_forms`. The output is deterministic.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import everyday_words  # noqa: E402  (the reviewed source, beside this file)
import make_wordnet_table  # noqa: E402
from make_wordnet_table import WORDNET, read_data_noun, read_exceptions, wordnet_version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "convscope" / "vocab" / "everyday.json"
COMMAND = "python tools/make_everyday_table.py"
#: A relation to a synset with more classes under it than this is too broad to be evidence
#: ("a diet belongs to the topic of animal": 398 classes).
BROAD = 40
#: pointer symbol -> (source, how the reason reads with the word's synset x and the target o)
RELATIONS = {
    "#p": ("wordnet:part-of", "{x} is part of {o}"),
    "%p": ("wordnet:part-of", "{o} is part of {x}"),
    "#m": ("wordnet:member-of", "{x} is a member of {o}"),
    "%m": ("wordnet:member-of", "{o} is a member of {x}"),
    "#s": ("wordnet:substance-of", "{x} is the substance of {o}"),
    "%s": ("wordnet:substance-of", "{o} is the substance of {x}"),
    ";c": ("wordnet:domain", "{x} belongs to the topic of {o}"),
    "-c": ("wordnet:domain", "{o} belongs to the topic of {x}"),
    "+": ("wordnet:derivation", "{x} and {o} are one word's forms"),
}


def a(name: str) -> str:
    """``name`` with its article: "a beach", "an alp"; none for a plural or mass noun
    ("people", "parallel bars", "gymnastics") or a topic ("military")."""
    if name.endswith(("s", "people", "equipment", "apparatus")) and not name.endswith("ss") or name in MASS:
        return name
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


MASS = {"military", "baseball", "basketball", "golf", "croquet", "ocean"}


def read_pointers(path: Path) -> dict[str, list[tuple[str, str]]]:
    """``{wnid: [(pointer symbol, target wnid)]}`` of every noun synset, noun targets only
    (the data line's layout is in :func:`make_wordnet_table.read_data_noun`)."""
    out = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split(" | ", 1)[0].split()
            at = 4 + 2 * int(fields[3], 16)
            pointers = [fields[at + 1 + 4 * k: at + 5 + 4 * k] for k in range(int(fields[at]))]
            out[f"n{fields[0]}"] = [(sym, f"n{off}") for sym, off, pos, _ in pointers
                                    if sym in RELATIONS and pos == "n"]
    return out


class WordNet:
    """Names, kinds and relations of WordNet's nouns, and the ImageNet classes under a synset."""

    def __init__(self):
        from convscope.vocab import Vocabulary

        self.licence, self.synsets = read_data_noun(WORDNET / "data.noun")
        self.pointers = read_pointers(WORDNET / "data.noun")
        self.exceptions = read_exceptions(WORDNET / "noun.exc")
        self.vocab = Vocabulary.load()
        self.labels = self.vocab.labels
        self.kinds = defaultdict(list)
        for wnid, (_, parents) in self.synsets.items():
            for parent in parents:
                self.kinds[parent].append(wnid)
        self._under: dict[str, list[int]] = defaultdict(list)
        for index in range(len(self.labels)):
            for wnid in self.vocab.ancestors(index):
                self._under[wnid].append(index)

    def name(self, wnid: str) -> str:
        return self.synsets[wnid][0][0]

    def under(self, wnid: str) -> list[int]:
        """The classes that are ``wnid`` or a kind of it, in index order."""
        return sorted(self._under.get(wnid, ()))

    def subtree(self, wnid: str) -> list[str]:
        """``wnid`` and all its kinds, in a fixed order (depth first, WordNet's order)."""
        out, todo = [], [wnid]
        while todo:
            x = todo.pop()
            if x not in out:
                out.append(x)
                todo.extend(reversed(self.kinds[x]))
        return out

    def kinds_of(self, sense: str) -> dict[int, tuple[str, str]]:
        """``{class: (reason, source)}`` of the classes that are kinds of ``sense``."""
        return {index: (f"{a(self.labels[index])} is a kind of {self.name(sense)}", "wordnet:kind-of")
                for index in self.under(sense)}

    def related(self, sense: str) -> dict[int, tuple[str, str]]:
        """``{class: (reason, source)}`` that the relations of ``sense`` and its kinds reach; the
        first (shortest to state) path wins."""
        out = {}
        for x in self.subtree(sense):
            for sym, o in self.pointers.get(x, ()):
                source, template = RELATIONS[sym]
                reason = template.format(x=a(self.name(x)), o=a(self.name(o)))
                if x != sense:
                    reason = f"{a(self.name(x))} is a kind of {self.name(sense)}; {reason}"
                under = self.under(o)
                if len(under) > BROAD:
                    continue
                for index in under:
                    if index not in out:
                        kind = "" if self.vocab.class_wnids[index] == o else \
                            f"; {a(self.labels[index])} is a kind of {self.name(o)}"
                        out[index] = (reason + kind, source)
        return out


def resolve(key: str, labels: list[str], net: WordNet) -> list[int]:
    """A class key of the source: ``"label"``, ``"label#index"`` or ``"@wnid"``."""
    if key.startswith("@"):
        found = net.under(key[1:])
        if not found:
            raise SystemExit(f"{key}: no ImageNet class under this synset")
        return found
    label, _, index = key.partition("#")
    if index:
        if labels[int(index)] != label:
            raise SystemExit(f"{key}: class {index} is {labels[int(index)]!r}")
        return [int(index)]
    found = [i for i, name in enumerate(labels) if name == label]
    if len(found) != 1:
        raise SystemExit(f"{key!r}: {'no class' if not found else 'several classes'} of that label; "
                         "write 'label#index'")
    return found


def fill(reason: str, label: str) -> str:
    """A reviewed reason with the class's label in it: "a {label} is a wild animal" reads "an
    African elephant is a wild animal" (the article as the label sounds, by its first letter)."""
    article = "an" if label[0].lower() in "aeiou" else "a"
    return reason.replace("a {label}", f"{article} {{label}}").format(label=label)


def split(forms: str) -> list[str]:
    from convscope.vocab import normalize

    return [normalize(f) for f in forms.split(",") if f.strip()]


def build() -> dict:
    from convscope.vocab import normalize

    net = WordNet()
    labels = net.labels
    words: dict[str, dict] = {}
    for word, spec in everyday_words.WORDS.items():
        drops = {key: resolve(key, labels, net) for key in spec.get("drop", {})}
        dropped = {i for found in drops.values() for i in found}
        classes = {}
        senses = spec.get("wordnet", ())
        found = [net.kinds_of(sense) for sense in senses] + [net.related(sense) for sense in senses]
        for mappings in found:  # kinds first: "a pizza is a kind of food" says more than a relation
            for index, (reason, source) in mappings.items():
                if index not in dropped and index not in classes:
                    classes[index] = {"label": labels[index], "reason": reason, "source": source}
        for key, reason in spec.get("classes", {}).items():
            for index in resolve(key, labels, net):
                if index in classes:
                    raise SystemExit(f"{word}: {labels[index]!r} is both reviewed and from WordNet "
                                     f"({classes[index]['reason']}); leave out one")
                classes[index] = {"label": labels[index], "reason": fill(reason, labels[index]),
                                  "source": "reviewed"}
        reached = {i for mappings in found for i in mappings}
        unused = [key for key, found in drops.items() if reached.isdisjoint(found)]
        if unused:
            raise SystemExit(f"{word}: drop {unused}: no relation reaches them")
        words[normalize(word)] = {"forms": split(spec.get("forms", "")),
                                  "classes": {str(i): classes[i] for i in sorted(classes)}}
    for forms, why in everyday_words.UNSEEN.items():
        head, *rest = split(forms)
        words[head] = {"forms": rest, "classes": {}, "unseen": why}
    check_forms(words)
    typed = {w for word, e in words.items() for w in (word, *e["forms"])}
    exceptions = {normalize(form): [normalize(b) for b in bases]
                  for form, bases in net.exceptions.items()
                  if normalize(form) not in typed and any(normalize(b) in typed for b in bases)}
    return {
        "wordnet": wordnet_version(),
        "generator": COMMAND,
        "source": "tools/everyday_words.py (reviewed); /usr/share/wordnet/data.noun, noun.exc",
        "licence": "The WordNet relations are WordNet 3.0's, under its licence "
                   "(see wordnet_imagenet.json); the reviewed entries are convscope's.",
        "words": dict(sorted(words.items())),
        "exceptions": dict(sorted(exceptions.items())),
    }


def check_forms(words: dict[str, dict]) -> None:
    seen: dict[str, str] = {}
    for word, entry in words.items():
        for form in (word, *entry["forms"]):
            if seen.setdefault(form, word) != word:
                raise SystemExit(f"{form!r} is a form of both {seen[form]!r} and {word!r}")


def dump(doc: dict) -> str:
    """JSON with one word and one exception a line (``make_wordnet_table.dump``'s layout)."""
    return make_wordnet_table.dump(doc, tables=("words", "exceptions"))


def main() -> None:
    doc = build()
    text = dump(doc)
    json.loads(text)  # the hand-made layout must still be JSON
    OUT.write_text(text, encoding="utf-8")
    words = doc["words"]
    seen = [w for w, e in words.items() if e["classes"]]
    sources = defaultdict(int)
    for e in words.values():
        for c in e["classes"].values():
            sources[c["source"]] += 1
    typed = sum(1 + len(e["forms"]) for e in words.values())
    print(f"wrote {OUT.relative_to(ROOT)}: {len(words)} words ({typed} with their forms), "
          f"{len(seen)} with classes, {len(words) - len(seen)} unseen; mappings by source: "
          + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())))


if __name__ == "__main__":
    main()
