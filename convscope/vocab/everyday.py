"""Everyday words ("beach", "people", "snow", "kids"), mapped to the ImageNet classes that are
evidence for them, each mapping with why; and the words this network has no class for.

The table (``everyday.json``, written by ``tools/make_everyday_table.py`` from WordNet 3.0's
relations beyond hypernyms and a reviewed source, ``tools/everyday_words.py``) holds each word
with the forms people type for it ("kids", "children" for "child") and, per class, a reason
("a beach is part of a shore; a seashore is a kind of shore") and its source ("reviewed",
"wordnet:part-of", "wordnet:member-of", "wordnet:domain", ...). A word marked ``unseen`` has no
class here: :meth:`EverydayWords.note` says so in one line, instead of unrelated close matches.

A user's own entries come from a JSON file of the same shape (:meth:`EverydayWords.load`)::

    {"words": {"picnic": {"forms": ["picnics"], "classes": {"588": {"reason": "a hamper holds a picnic"}}},
               "sunset": {"classes": {"978": {"reason": "our sunsets are at the sea"}}},
               "graffiti": {"unseen": "no class is a painted wall"}}}

An entry there replaces the table's entry of the same word, and its forms win over the table's.
Nothing here reads an index or imports torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ArgumentError
from .wordnet import Vocabulary, base_forms, normalize

TABLE = "everyday.json"
#: What a phrase may start with and still be read as its word: "pictures of food" is "food".
LEADS = ("photos of", "photo of", "pictures of", "picture of", "pics of", "images of", "image of",
         "shots of", "my")
TEACH = "teach it from examples (`convscope teach`)"


@dataclass(frozen=True)
class Entry:
    """One word of the table: the forms people type for it, its classes with why, or why none."""

    word: str
    forms: tuple[str, ...]
    reasons: Mapping[int, str]
    sources: Mapping[int, str]
    unseen: str | None = None  # why the network has no class for it, when it has none


@dataclass(frozen=True)
class Evidence:
    """What an everyday word says about a photo: ``reasons[i]`` is why class ``i`` is evidence
    for ``word``, ``sources[i]`` where that mapping comes from. ``phrase`` is what was read
    ("kids"), ``word`` the table's word it is a form of ("child"). ``unseen``: the network has no
    class for the word (``reasons`` is empty); :attr:`note` says so.
    """

    word: str
    phrase: str
    reasons: Mapping[int, str]
    sources: Mapping[int, str]
    unseen: bool = False

    @property
    def classes(self) -> frozenset[int]:
        return frozenset(self.reasons)

    @property
    def note(self) -> str:
        return unseen_note(self.phrase)

    def why(self, index: int) -> str:
        """One line: ``"beach: a beach is part of a shore; ... (wordnet:part-of)"``."""
        return f"{self.word}: {self.reasons[index]} ({self.sources[index]})"

    def score(self, probabilities: Sequence[float]) -> float:
        """The probability the classifier gives to the word's classes (their sum), from one
        photo's 1,000 class probabilities."""
        return float(sum(probabilities[i] for i in sorted(self.reasons)))


def unseen_note(word: str) -> str:
    """The one line for a word that this network has no class for."""
    return f"the network has no class for {word!r}; {TEACH}"


class EverydayWords:
    """The everyday-word table, and a user's own entries on top.

    >>> words = EverydayWords.load()
    >>> words.lookup("Beaches").reasons[978]
    'a beach is part of a shore; a seashore is a kind of shore'
    >>> words.unseen("sunset")
    True
    """

    def __init__(self, entries: Sequence[Entry], exceptions: Mapping[str, Sequence[str]]):
        self.entries: dict[str, Entry] = {}
        self._forms: dict[str, str] = {}
        for entry in entries:  # later entries win: a user's over the table's
            old = self.entries.get(entry.word)
            if old is not None:
                for form in (old.word, *old.forms):
                    if self._forms.get(form) == old.word:
                        del self._forms[form]
            self.entries[entry.word] = entry
            for form in (entry.word, *entry.forms):
                self._forms[form] = entry.word
        self._exceptions = {normalize(k): [normalize(b) for b in v] for k, v in exceptions.items()}
        self.longest = max(len(form.split()) for form in self._forms)
        """The most words a form has: how far :meth:`match` looks ahead."""

    @classmethod
    def load(cls, extra: str | Path | None = None) -> EverydayWords:
        """The table shipped with convscope, and with ``extra`` (a JSON file of a user's entries,
        the module docstring shows its shape) on top. A file that cannot be read or is not of
        that shape raises :class:`~convscope.errors.ArgumentError` (``param`` ``"extra"``) with
        one line naming it and what is wrong."""
        if extra is None:
            return _load()
        base = _load()
        return cls([*base.entries.values(), *read_extra(Path(extra))], base._exceptions)

    @property
    def words(self) -> list[str]:
        """Every word and form of the table, normalized: for close matches of a typo."""
        return sorted(self._forms)

    def entry(self, phrase: str) -> Entry | None:
        """The entry that ``phrase`` (as typed) is a word, form or plural of, or None."""
        text = normalize(phrase)
        for lead in LEADS:
            if text.startswith(lead + " ") and len(text) > len(lead) + 1:
                text = text[len(lead) + 1:]
                break
        forms = base_forms(text, self._forms, self._exceptions)
        return self.entries[self._forms[forms[0]]] if forms else None

    def lookup(self, phrase: str) -> Evidence | None:
        """The evidence for ``phrase`` ("beach", "Kids", "birthday parties", "pictures of
        food"), or None when the table does not hold it. Case, hyphens and plurals do not matter."""
        entry = self.entry(phrase)
        if entry is None:
            return None
        return Evidence(word=entry.word, phrase=normalize(phrase), reasons=dict(entry.reasons),
                        sources=dict(entry.sources), unseen=entry.unseen is not None)

    def match(self, tokens: Sequence[str], start: int = 0) -> tuple[Evidence, int] | None:
        """The longest phrase of the table at ``tokens[start:]`` (words as a query splits them),
        and the position after it; None when no phrase starts there."""
        for end in range(min(len(tokens), start + self.longest), start, -1):
            evidence = self.lookup(" ".join(tokens[start:end]))
            if evidence is not None:
                return evidence, end
        return None

    def unseen(self, word: str) -> bool:
        """Whether ``word`` is in the table as one that this network has no class for."""
        entry = self.entry(word)
        return entry is not None and entry.unseen is not None

    def note(self, word: str) -> str:
        """The one line that says the network has no class for ``word``."""
        return unseen_note(normalize(word))


def read_extra(path: Path) -> list[Entry]:
    """A user's entries from ``path``; :class:`~convscope.errors.ArgumentError` for a file that
    cannot be read or is not of the table's shape."""
    def bad(what: str) -> ArgumentError:
        return ArgumentError(f"everyday words file {str(path)!r}: {what}", param="extra")

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise bad(f"cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("words"), dict):
        raise bad('it holds no "words" object; write {"words": {"picnic": {"classes": {...}}}}')
    labels = Vocabulary.load().labels
    try:
        return [_entry(word, spec, labels, user=True) for word, spec in doc["words"].items()]
    except ValueError as e:
        raise bad(str(e)) from None


def _entry(word: str, spec, labels: Sequence[str], *, user: bool = False) -> Entry:
    """An entry from its JSON; ValueError with what is wrong."""
    if not isinstance(spec, dict):
        raise ValueError(f"word {word!r}: its entry is not an object")
    key = normalize(word)
    if not key:
        raise ValueError("a word is empty")
    forms = spec.get("forms", [])
    if not isinstance(forms, list) or not all(isinstance(f, str) and normalize(f) for f in forms):
        raise ValueError(f"word {word!r}: \"forms\" is not a list of words")
    classes = spec.get("classes", {})
    if not isinstance(classes, dict):
        raise ValueError(f"word {word!r}: \"classes\" is not an object of class index -> reason")
    reasons, sources = {}, {}
    for name, mapping in classes.items():
        if not (isinstance(name, str) and name.isdigit() and int(name) < len(labels)):
            raise ValueError(f"word {word!r}: class {name!r} is not a class index 0..{len(labels) - 1}")
        index = int(name)
        if not isinstance(mapping, dict) or not isinstance(mapping.get("reason"), str) \
                or not mapping["reason"].strip():
            raise ValueError(f"word {word!r}: class {index} ({labels[index]}) has no \"reason\"")
        label = mapping.get("label", labels[index])
        if label != labels[index]:
            raise ValueError(f"word {word!r}: class {index} is {labels[index]!r}, not {label!r}")
        reasons[index] = mapping["reason"].strip()
        sources[index] = str(mapping.get("source", "user" if user else "reviewed"))
    unseen = spec.get("unseen")
    if unseen is not None and not isinstance(unseen, (str, bool)):
        raise ValueError(f"word {word!r}: \"unseen\" is not a reason (a string)")
    if unseen and reasons:
        raise ValueError(f"word {word!r}: it is \"unseen\" but has classes")
    if not unseen and not reasons:
        raise ValueError(f"word {word!r}: it has no classes; give some, or mark it \"unseen\" with why")
    return Entry(key, tuple(normalize(f) for f in forms), reasons, sources,
                 (unseen if isinstance(unseen, str) else "no class") if unseen else None)


@cache
def _load() -> EverydayWords:
    doc = json.loads(resources.files(__package__).joinpath(TABLE).read_text(encoding="utf-8"))
    labels = Vocabulary.load().labels
    return EverydayWords([_entry(w, spec, labels) for w, spec in doc["words"].items()], doc["exceptions"])
