"""Words to ImageNet classes, offline, through WordNet 3.0's noun hierarchy.

The table (``wordnet_imagenet.json``, written by ``tools/make_wordnet_table.py``) holds the
1,000 ImageNet-1k classes and all their ancestors through hypernym and instance-hypernym links,
with their lemmas and WordNet's irregular plurals. A word matches a class when one of its noun
senses is the class or an ancestor of it: "dog" matches all 118 dog breeds, "vehicle" every car,
boat and plane class.

Query words (``docs/search.md`` says the same for users):

- Case, spaces, underscores and hyphens do not matter: "Hot-Dog" is "hot dog".
- Plurals are read as WordNet does: the exception list first ("mice" -> "mouse", "geese" ->
  "goose"), otherwise its suffix rules for nouns ("dogs", "buses", "boxes", "churches",
  "strawberries"). A phrase that is a lemma and also the plural of one ("glasses") means both.
- Words are read from the left as the longest WordNet lemmas that they spell, so a phrase that
  is one lemma is one term: "sports car", "golden retrievers", "black-and-tan coonhound".
- Commas, "or" and "and" between terms list alternatives, and the query matches the classes of
  any of them: "dog, cat", "dogs or cats", "dogs and cats".
- Terms side by side narrow each other: a class must fall under every one. "retriever dog" is
  the retrievers; "dog cat" matches no class, which is an error that says to write "dog, cat".
  A photo's classes are mutually exclusive kinds, so an added word narrows, as in any search
  box; reading it as "or" would make "retriever dog" match every dog.

Nothing here reads ``/usr/share/wordnet`` or imports torch: it loads in milliseconds.
"""
from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Container, Mapping, Sequence

from ..errors import ArgumentError, QueryError, UnknownWordError, unknown_name_error

TABLE = "wordnet_imagenet.json"

# WordNet's detachment rules for nouns (morph.c), tried when the exception list has no entry.
NOUN_SUFFIXES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
                 ("shes", "sh"), ("men", "man"), ("ies", "y"))
SEPARATORS = frozenset({",", "or", "and"})
#: The longest query read: a search box's words, not a document. Past these a query is refused
#: with one line before it is parsed (its cost, and the close matches of an unknown word, grow with it).
MAX_QUERY_WORDS = 32
MAX_QUERY_CHARS = 256
UNKNOWN_HINT = ("Search words are WordNet nouns for ImageNet classes and their kinds "
                "(dog, vehicle, fruit); try a broader or a narrower word.")


class NoClassError(QueryError, ValueError):
    """Every word is known, but no ImageNet class falls under all the words side by side."""


def normalize(text: str) -> str:
    """The form that lemmas and queries are compared in: lower case, one space for any run of
    spaces, underscores and hyphens. ``normalize("Hot-Dog")`` is ``"hot dog"``."""
    return " ".join(re.split(r"[\s_\-]+", text.lower())).strip()


def _tokens(query: str) -> list[str]:
    return re.findall(r",|[^\s,_\-]+", query.lower())


@dataclass(frozen=True)
class Synset:
    """One WordNet noun synset of the table; ``index`` and ``label`` only for the 1,000 classes."""

    wnid: str
    lemmas: tuple[str, ...]
    parents: tuple[str, ...]
    index: int | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        """The readable name: the class label as convscope shows it, else the first lemma."""
        return self.label or self.lemmas[0]


@dataclass(frozen=True)
class QueryMatch:
    """The ImageNet classes that a query names, and why.

    ``paths[i]`` is the WordNet path from class ``i`` up to the matched word, as readable names,
    the shortest where there are several: ``("golden retriever", "retriever", "sporting dog",
    "hunting dog", "dog")``. ``lemmas`` are the WordNet lemmas the query was read as ("mice" is
    read as ``("mouse",)``), ``senses`` the ids of the matched synsets.
    """

    query: str
    lemmas: tuple[str, ...]
    senses: tuple[str, ...]
    paths: Mapping[int, tuple[str, ...]]

    @property
    def classes(self) -> frozenset[int]:
        return frozenset(self.paths)

    def score(self, probabilities: Sequence[float]) -> float:
        """The probability that the classifier gives to the matched classes (their sum), from the
        1,000 class probabilities of one photo (a list or a 1-D array)."""
        return float(sum(probabilities[i] for i in sorted(self.paths)))


@dataclass(frozen=True)
class _Term:
    text: str  # the words as typed, normalized
    lemmas: tuple[str, ...]  # what they were read as: "mice" is ("mouse",)
    senses: tuple[str, ...]


class Vocabulary:
    """The WordNet table: lemmas, their synsets, and the hierarchy above the 1,000 classes.

    >>> vocab = Vocabulary.load()
    >>> vocab.classes_for("sports car").paths
    {817: ('sports car',)}
    """

    def __init__(self, synsets: Mapping[str, Synset], exceptions: Mapping[str, Sequence[str]],
                 wordnet: str, licence: str):
        self.synsets = dict(synsets)
        self.wordnet = wordnet
        self.licence = licence
        classes = sorted((s for s in self.synsets.values() if s.index is not None), key=lambda s: s.index)
        self.class_wnids = [s.wnid for s in classes]
        self.labels = [s.name for s in classes]
        self._by_lemma: dict[str, list[str]] = {}
        for s in self.synsets.values():
            for lemma in s.lemmas:
                senses = self._by_lemma.setdefault(normalize(lemma), [])
                if s.wnid not in senses:
                    senses.append(s.wnid)
        self._exceptions = {normalize(k): [normalize(b) for b in v] for k, v in exceptions.items()}
        self._longest = max(len(k.split()) for k in self._by_lemma)
        self._class_ancestors: list[frozenset[str]] | None = None
        self._path_cache: dict[tuple[str, ...], dict[int, tuple[str, ...]]] = {}

    @classmethod
    def load(cls) -> Vocabulary:
        """The table shipped with convscope (read once, then shared: it is read-only)."""
        return _load()

    @property
    def words(self) -> list[str]:
        """Every lemma of the table, normalized: what a query may say."""
        return sorted(self._by_lemma)

    def base_forms(self, phrase: str) -> list[str]:
        """The lemmas that ``phrase`` (normalized) is or is a plural of, WordNet's way:
        ``base_forms("mice") == ["mouse"]``, ``base_forms("dogs") == ["dog"]``."""
        return base_forms(phrase, self._by_lemma, self._exceptions)

    def classes_for(self, query: str) -> QueryMatch:
        """The ImageNet classes under every noun sense of ``query``, with their WordNet paths.

        ``query`` is a word or phrase as a user types it ("dog", "Golden Retrievers", "hot-dog",
        "dogs or cats"); the module docstring says how several words combine. Raises
        :class:`~convscope.errors.UnknownWordError` for a word the table does not hold, with close
        matches; :class:`NoClassError` when no class falls under all the words side by side; and
        :class:`~convscope.errors.ArgumentError` (``param`` ``"query"``) for a query with no word,
        or longer than :data:`MAX_QUERY_WORDS` words or :data:`MAX_QUERY_CHARS` characters.

        >>> Vocabulary.load().classes_for("dogs").paths[207]
        ('golden retriever', 'retriever', 'sporting dog', 'hunting dog', 'dog')
        """
        tokens = check_query(query)
        alternatives = self._parse(tokens)
        if not alternatives:
            raise ArgumentError(f"the query {query!r} holds no word; give one such as 'dog'", param="query")
        paths: dict[int, tuple[str, ...]] = {}
        for terms in alternatives:
            for index, path in self._narrowed(terms).items():
                if index not in paths or len(path) < len(paths[index]):
                    paths[index] = path
        terms = [t for terms in alternatives for t in terms]
        return QueryMatch(query=query, lemmas=_unique(f for t in terms for f in t.lemmas),
                          senses=_unique(s for t in terms for s in t.senses),
                          paths=dict(sorted(paths.items())))

    def term_end(self, tokens: Sequence[str], i: int) -> int | None:
        """Where the longest noun of the table that starts at ``tokens[i]`` ends (the position
        after its last token), or None when no noun starts there: how a query grammar that reads
        other kinds of words too finds the nouns among them."""
        term, end = self._longest_term(list(tokens), i)
        return end if term is not None else None

    def path(self, index: int, senses: Sequence[str]) -> tuple[str, ...] | None:
        """The readable names from class ``index`` up to the nearest of ``senses`` (synset ids),
        or None if none of them is the class or one of its ancestors. Breadth first, parents in
        WordNet's order, so the shortest path wins and ties go to the first parent."""
        targets = set(senses)
        start = self.class_wnids[index]
        came_from: dict[str, str | None] = {start: None}
        todo = deque([start])
        while todo:
            wnid = todo.popleft()
            if wnid in targets:
                names = []
                while wnid is not None:
                    names.append(self.synsets[wnid].name)
                    wnid = came_from[wnid]
                return tuple(reversed(names))
            for parent in self.synsets[wnid].parents:
                if parent not in came_from:
                    came_from[parent] = wnid
                    todo.append(parent)
        return None

    def ancestors(self, index: int) -> frozenset[str]:
        """The ids of class ``index``'s synset and of all its ancestors, through every parent."""
        seen, todo = set(), [self.class_wnids[index]]
        while todo:
            wnid = todo.pop()
            if wnid not in seen:
                seen.add(wnid)
                todo.extend(self.synsets[wnid].parents)
        return frozenset(seen)

    def _paths(self, senses: Sequence[str]) -> dict[int, tuple[str, ...]]:
        """The path of every class under one of ``senses``; only those classes are walked (the
        others are ruled out by their ancestor sets), and a server asking again gets the same
        answer from a small cache."""
        key = tuple(senses)
        hit = self._path_cache.get(key)
        if hit is None:
            if self._class_ancestors is None:
                self._class_ancestors = [self.ancestors(i) for i in range(len(self.class_wnids))]
            targets = set(key)
            under = [i for i, up in enumerate(self._class_ancestors) if not targets.isdisjoint(up)]
            hit = {i: self.path(i, key) for i in under}
            if len(self._path_cache) >= 256:
                self._path_cache.clear()
            self._path_cache[key] = hit
        return dict(hit)

    def _narrowed(self, terms: list[_Term]) -> dict[int, tuple[str, ...]]:
        """The classes under every term; each with its longest path, which runs through the
        narrower terms up to the broadest ("golden retriever > retriever > ... > dog")."""
        paths = self._paths(terms[0].senses)
        for term in terms[1:]:
            other = self._paths(term.senses)
            paths = {i: max(p, other[i], key=len) for i, p in paths.items() if i in other}
        if not paths:
            both = " and ".join(repr(t.text) for t in terms)
            either = ", ".join(t.text for t in terms)
            raise NoClassError(f"no ImageNet class is both {both}; search {either!r} for photos of any of them")
        return paths

    def _parse(self, tokens: list[str]) -> list[list[_Term]]:
        """Alternatives (split at separators), each a list of terms read greedily from the left;
        :class:`~convscope.errors.UnknownWordError` at the first word that does not read."""
        alternatives, bad = self._read(tokens)
        if bad is None:
            return alternatives
        raise unknown_name_error("word", self._culprit(tokens, bad), self.words, hint=UNKNOWN_HINT,
                                 cls=UnknownWordError)

    def _read(self, tokens: list[str]) -> tuple[list[list[_Term]], int | None]:
        """The alternatives read from ``tokens``, and the position of the first token that no
        term reads (None when all do). One pass, no recursion: its cost is linear in the tokens."""
        alternatives: list[list[_Term]] = [[]]
        i = 0
        while i < len(tokens):
            term, i_next = self._longest_term(tokens, i)
            if term is not None:
                alternatives[-1].append(term)
                i = i_next
            elif tokens[i] in SEPARATORS:
                alternatives.append([])
                i += 1
            else:
                return [terms for terms in alternatives if terms], i
        return [terms for terms in alternatives if terms], None

    def _longest_term(self, tokens: list[str], i: int) -> tuple[_Term | None, int]:
        for j in range(min(len(tokens), i + self._longest), i, -1):
            if "," in tokens[i:j]:
                continue
            forms = self.base_forms(" ".join(tokens[i:j]))
            if forms:
                senses = _unique(s for f in forms for s in self._by_lemma[f])
                return _Term(" ".join(tokens[i:j]), tuple(forms), senses), j
        return None, i

    def _culprit(self, tokens: list[str], i: int) -> str:
        """What to call unknown: the word at ``i`` if the rest of its alternative reads, else the
        whole rest ("sports cra"), whose close matches are then phrases ("sports car"), when it is
        no longer than a lemma can be."""
        end = next((k for k in range(i + 1, len(tokens)) if tokens[k] in SEPARATORS), len(tokens))
        if end - i <= self._longest and self._read(tokens[i + 1:end])[1] is not None:
            return " ".join(tokens[i:end])
        return tokens[i]


def base_forms(phrase: str, known: Container[str], exceptions: Mapping[str, Sequence[str]]) -> list[str]:
    """The words of ``known`` that ``phrase`` (normalized) is or is a noun plural of, read as
    WordNet reads them: ``exceptions`` (irregular plurals, ``{"mice": ["mouse"]}``) first, else
    its suffix rules (:data:`NOUN_SUFFIXES`). A phrase's last word carries its plural
    ("birthday parties" -> "birthday party")."""
    if phrase in exceptions:
        forms = [phrase, *exceptions[phrase]]
    else:
        forms = [phrase] + [phrase[: -len(end)] + base for end, base in NOUN_SUFFIXES if phrase.endswith(end)]
    return [f for i, f in enumerate(forms) if f in known and f not in forms[:i]]


def check_query(query: str) -> list[str]:
    """The tokens of ``query`` (words and commas), once it is a string within
    :data:`MAX_QUERY_CHARS` characters and :data:`MAX_QUERY_WORDS` words; else
    :class:`~convscope.errors.ArgumentError` (``param`` ``query``) with one line."""
    if not isinstance(query, str):
        raise ArgumentError(f"a query is a string of words, got {type(query).__name__}", param="query")
    if len(query) > MAX_QUERY_CHARS:
        raise ArgumentError(f"the query is {len(query):,} characters long; a search takes at most "
                            f"{MAX_QUERY_CHARS} (and {MAX_QUERY_WORDS} words)", param="query")
    tokens = _tokens(query)
    words = sum(t != "," for t in tokens)
    if words > MAX_QUERY_WORDS:
        raise ArgumentError(f"the query holds {words} words; a search takes at most {MAX_QUERY_WORDS}", param="query")
    return tokens


def _unique(items) -> tuple:
    return tuple(dict.fromkeys(items))


@cache
def _load() -> Vocabulary:
    doc = json.loads(resources.files(__package__).joinpath(TABLE).read_text(encoding="utf-8"))
    synsets = {wnid: Synset(wnid, tuple(e["lemmas"]), tuple(e["parents"]), e.get("class"), e.get("label"))
               for wnid, e in doc["synsets"].items()}
    return Vocabulary(synsets, doc["exceptions"], doc["wordnet"], doc["licence"])
