"""The query grammar: a search box's words read, left to right, as terms of every kind of
evidence (:mod:`.terms`), against the vocabularies and what this index holds.

- Commas, "or" and "and" separate **alternatives**; a result matches one of them.
- A concept a person taught this index (``convscope teach``: "rex", "our kitchen") is read
  first, before any other word of the same spelling (its why says which word it hides).
- Within an alternative, **words side by side narrow**: a result matches every term. Each
  position is read as the longest of, in this order: a time ("2015", "may 2015",
  "2015-05-02", "night": :mod:`convscope.vocab.times`; or, for an everyday word that is a time
  too, "winter", either: taken in winter, or snow in the photo); a place of this index ("lyon",
  "new york", "france": the city, region and country names its photos' GPS positions gave,
  accents and case ignored); a WordNet noun of the ImageNet classes or an everyday word
  (:mod:`convscope.vocab.everyday`), the longer of the two, both when they are as long;
  consecutive WordNet nouns narrow each other at the class level as before ("retriever dog").
- On an index that recognized text in its photos, a word is also looked for in the photos'
  text (tolerant of recognition errors), and a word in double quotes ("\\"open\\"") only there.
  A word no vocabulary reads is looked for in the text alone.
- A word that no vocabulary reads is an error with close matches; an everyday word the
  network has no class for (sunset) says so in one line and how to teach it.

>>> plan = read(store, "dog france 2015")
>>> [[type(t).__name__ for t in alt] for alt in plan.alternatives]
[['ClassTerm', 'PlaceTerm', 'TimeTerm']]
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata
from pathlib import Path

from ..errors import ArgumentError, QueryError, UnknownWordError, unknown_name_error
from ..vocab import EverydayWords, Vocabulary, times
from ..vocab.wordnet import MAX_QUERY_CHARS, MAX_QUERY_WORDS, SEPARATORS
from . import terms as T
from .store import IndexStore

_TOKEN = re.compile(r'"[^"]*"?|,|\d{4}[-/]\d{1,2}(?:[-/]\d{1,2})?|[^\s,_\-"]+')
#: What an unknown word's error says a query may hold.
UNKNOWN_HINT = ("Search words are what is in the photo (WordNet nouns of the ImageNet classes: dog, vehicle, fruit; "
                "everyday words: people, beach, snow), places of this index's photos (lyon, france) and times "
                "(2015, may 2015, night); try a broader or a narrower word.")
#: The columns of ``files`` whose names are places a query may name, most specific first.
PLACE_LEVELS = ("city", "district", "region", "country")


class NoEvidenceError(UnknownWordError):
    """An everyday word that this network has no class for (and no photo's text holds)."""


@dataclasses.dataclass
class Plan:
    """A query read: ``alternatives``, each a list of terms that narrow one another;
    ``unknown``: words read as text only, because no vocabulary holds them (if nothing matches,
    :meth:`nothing_found` says why in one line)."""

    query: str
    alternatives: list[list[T.Term]]
    unknown: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)  # (word, note or None)
    known: list[str] = dataclasses.field(default_factory=list)  # every word a query may say, for close matches

    def nothing_found(self, store: IndexStore) -> QueryError | None:
        """The error to raise when no entry matched: that of the first unknown word that no
        photo's text holds either, else None (words that are there, just not together)."""
        for word, note in self.unknown:
            if T.TextTerm(word).scores(store, 0.0).any():
                continue
            if note:
                return NoEvidenceError(note)
            return unknown_name_error("word", word, self.known, hint=UNKNOWN_HINT, cls=UnknownWordError)
        return None


def tokens(query: str) -> list[str]:
    """The tokens of ``query``: words (lower case), commas, dates ("2015-05-02") and quoted
    phrases (kept with their quotes), after the query's limits are checked."""
    if not isinstance(query, str):
        raise ArgumentError(f"a query is a string of words, got {type(query).__name__}", param="query")
    if len(query) > MAX_QUERY_CHARS:
        raise ArgumentError(f"the query is {len(query):,} characters long; a search takes at most "
                            f"{MAX_QUERY_CHARS} (and {MAX_QUERY_WORDS} words)", param="query")
    out = [t if t.startswith('"') else t.lower() for t in _TOKEN.findall(query)]
    words = sum(t != "," for t in out)
    if words > MAX_QUERY_WORDS:
        raise ArgumentError(f"the query holds {words} words; a search takes at most {MAX_QUERY_WORDS}", param="query")
    return out


def plain(text: str) -> str:
    """A place name as a query compares it: lower case, accents off, one space between words
    ("Auvergne-Rhône-Alpes" is "auvergne rhone alpes")."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(re.split(r"[\s_\-'’.,]+", text.lower())).strip()


def places(store: IndexStore) -> dict[str, list[tuple[str, str]]]:
    """This index's place names: the plain name -> the (column, value) it names."""
    def make():
        columns = store.file_columns
        out: dict[str, list[tuple[str, str]]] = {}
        for level in PLACE_LEVELS:
            if level not in columns:
                continue
            for (value,) in store.query(f"SELECT DISTINCT {level} FROM files WHERE {level} IS NOT NULL AND {level} != ''"):
                key = plain(value)
                if key and (level, value) not in out.setdefault(key, []):
                    out[key].append((level, value))
        return out

    return store.memo("places", make)


def has_text(store: IndexStore) -> bool:
    """Whether the index recognized text in its photos (the ``text`` signal)."""
    return "text" in store.signals


def read(store: IndexStore, query: str, *, words: EverydayWords | None = None,
         extra_words: str | Path | None = None) -> Plan:
    """Read ``query`` against the vocabularies and this index (its places, whether it holds
    text): a :class:`Plan`. ``words``: the everyday words (default: the shipped table, with the
    user's file ``extra_words`` if given). Errors: one line (:class:`ArgumentError` for a query
    with no word or too long; :class:`UnknownWordError` with close matches; :class:`NoEvidenceError`;
    :class:`convscope.vocab.wordnet.NoClassError`)."""
    toks = tokens(query)
    vocab = Vocabulary.load()
    words = words or EverydayWords.load(extra_words)
    named = places(store)
    longest_place = max((len(k.split()) for k in named), default=0)
    text = has_text(store)
    taught = _taught(store)
    plan = Plan(query, [])
    alternatives: list[list[str]] = [[]]
    for t in toks:
        if t in SEPARATORS:
            alternatives.append([])
        else:
            alternatives[-1].append(t)
    for alt in alternatives:
        if alt:
            plan.alternatives.append(_read_alternative(alt, vocab, words, named, longest_place, text, plan, taught))
    if not plan.alternatives:
        raise ArgumentError(f"the query {query!r} holds no word; give one such as 'dog'", param="query")
    if plan.unknown:
        plan.known = _known(vocab, words, named, taught)
    return _merged(plan)


def _taught(store: IndexStore) -> dict[str, object]:
    """This index's taught concepts by their names as tokens ("our kitchen"); read at every
    query (a teach writes them while the index is open)."""
    from . import concepts

    return {" ".join(tokens(c.name)): c for c in concepts.load(store)}


def _read_alternative(toks, vocab, words, named, longest_place, text, plan, taught) -> list[T.Term]:
    out: list[T.Term] = []
    run: list[str] = []  # consecutive WordNet nouns: they narrow each other at the class level

    def flush():
        if run:
            phrase = " ".join(run)
            out.append(_with_text(T.ClassTerm(phrase, vocab.classes_for(phrase).paths), text))
            run.clear()

    longest_taught = max((len(k.split()) for k in taught), default=0)
    i = 0
    while i < len(toks):
        tok = toks[i]
        found = next(((" ".join(toks[i:j]), j) for j in range(min(len(toks), i + longest_taught), i, -1)
                      if " ".join(toks[i:j]) in taught), None)
        if found is not None:
            flush()
            key, j = found
            hides = [kind for kind, hit in (("a WordNet word", vocab.term_end(toks, i) == j),
                                             ("an everyday word", (words.match(toks, i) or (None, None))[1] == j),
                                             ("a place", _place_at(toks, i, named, j - i) == (plain(key), j)))
                     if hit]
            note = f"your concept, not {' or '.join(hides)} of the same spelling" if hides else None
            out.append(T.ConceptTerm(key, taught[key], note))
            i = j
            continue
        if tok.startswith('"'):
            flush()
            inner = [w for w in re.split(r"[\s,_\-]+", tok.strip('"').lower()) if w]
            out.extend(T.TextTerm(w) for w in inner)
            i += 1
            continue
        when = times.parse(toks, i)
        if when is not None:
            flush()
            term, used = when
            phrase = " ".join(toks[i:i + used])
            seen = words.match(toks, i)  # "winter": taken in winter, or snow in the photo
            if seen and seen[1] == i + used and seen[0].reasons and not seen[0].unseen:
                out.append(T.AnyOf(phrase, [T.TimeTerm(phrase, term), T.WordTerm(phrase, seen[0])]))
            else:
                out.append(T.TimeTerm(phrase, term))
            i += used
            continue
        place = _place_at(toks, i, named, longest_place)
        if place is not None:
            flush()
            key, j = place
            out.append(T.PlaceTerm(" ".join(toks[i:j]), named[key]))
            i = j
            continue
        j_noun = vocab.term_end(toks, i)
        everyday = words.match(toks, i)
        j_word = everyday[1] if everyday else None
        if everyday and (j_noun is None or j_word > j_noun):
            flush()
            evidence = everyday[0]
            phrase = " ".join(toks[i:j_word])
            if evidence.unseen or not evidence.reasons:
                _unknown(out, plan, phrase, evidence.note, text)
            else:
                out.append(_with_text(T.WordTerm(phrase, evidence), text))
            i = j_word
        elif everyday and j_word == j_noun and not everyday[0].unseen and everyday[0].reasons:
            flush()
            phrase = " ".join(toks[i:j_word])
            both = T.AnyOf(phrase, [T.ClassTerm(phrase, vocab.classes_for(phrase).paths), T.WordTerm(phrase, everyday[0])])
            out.append(_with_text(both, text))
            i = j_word
        elif j_noun is not None:
            run.extend(toks[i:j_noun])
            i = j_noun
        else:
            flush()
            if not text:  # the one-line error, with close matches from every vocabulary
                raise unknown_name_error("word", tok, _known(vocab, words, named, taught), hint=UNKNOWN_HINT,
                                         cls=UnknownWordError)
            _unknown(out, plan, tok, None, text)
            i += 1
    flush()
    return out


def _known(vocab, words, named, taught) -> list[str]:
    """Every word a query may say here, for the close matches of an unknown one."""
    return sorted({*vocab.words, *words.words, *named, *taught})


def _unknown(out, plan, phrase, note, text) -> None:
    """An everyday word with no evidence (``note`` says so), or on an index with text any word
    no vocabulary reads: looked for in the photos' text; without text, ``note`` is the error."""
    if not text:
        raise NoEvidenceError(note)
    plan.unknown.append((phrase, note))
    out.append(T.TextTerm(phrase))


def _with_text(term: T.Term, text: bool) -> T.Term:
    """The term, or, on an index with text, the term or the same words written in the photo."""
    if not text or " " in term.words:
        return term
    return T.AnyOf(term.words, [term, T.TextTerm(term.words)])


def _place_at(toks, i, named, longest) -> tuple[str, int] | None:
    for j in range(min(len(toks), i + longest), i, -1):
        key = plain(" ".join(toks[i:j]))
        if key in named:
            return key, j
    return None


def _merged(plan: Plan) -> Plan:
    """"dog, cat": alternatives that are each one WordNet term score as one term over all their
    classes (a photo's score is the probability of all the matched classes together)."""
    if len(plan.alternatives) < 2 or not all(len(a) == 1 for a in plan.alternatives):
        return plan
    classes, texts = [], []
    for (term,) in plan.alternatives:
        parts = term.terms if isinstance(term, T.AnyOf) else [term]
        if not (type(parts[0]) is T.ClassTerm and all(isinstance(p, T.TextTerm) for p in parts[1:])):
            return plan
        classes.append(parts[0])
        texts.extend(parts[1:])
    paths: dict[int, tuple] = {}
    for term in classes:
        for index, path in term.paths.items():
            if index not in paths or len(path) < len(paths[index]):
                paths[index] = tuple(path)
    merged: T.Term = T.ClassTerm(plan.query, dict(sorted(paths.items())))
    if texts:
        merged = T.AnyOf(plan.query, [merged, *texts])
    return dataclasses.replace(plan, alternatives=[[merged]])


__all__ = ["NoEvidenceError", "PLACE_LEVELS", "Plan", "has_text", "places", "plain", "read", "tokens"]
