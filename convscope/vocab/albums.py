"""Albums: a readable WordNet category for each ImageNet class ("animals > dogs", "food").

The one album taxonomy of convscope (the index's albums, :func:`convscope.index.albums.albums`,
file photos under it). :data:`ALBUMS` is 24 categories, each a name and the query words whose
classes it holds (read as a keyword search reads them, :meth:`Vocabulary.classes_for`), most
specific first: a class goes to the first album whose words hold it ("animals > dogs" before
"animals > mammals"; a catch-all "animals" would hold no class, so there is none). 852 of the 1,000 classes get an album; the rest (an
umbrella, a rifle) get None, and the index groups their photos by embedding instead.

>>> album_for(207), album_for(817)
('animals > dogs', 'vehicles > cars')
"""
from __future__ import annotations

import functools

from .wordnet import Vocabulary

#: Albums by WordNet category: (album name, query words), most specific first.
ALBUMS = (
    ("animals > dogs", "dog"), ("animals > cats", "cat, big cat"), ("animals > birds", "bird"), ("animals > fish", "fish"),
    ("animals > reptiles and amphibians", "reptile, amphibian"), ("animals > insects and spiders", "insect, arachnid"),
    ("animals > primates", "primate"), ("animals > mammals", "mammal"), ("animals > sea life", "invertebrate"),
    ("food > fruit and vegetables", "fruit, vegetable"), ("food", "food, dish"),
    ("vehicles > cars", "car"), ("vehicles > boats", "boat, ship"), ("vehicles > aircraft", "aircraft"), ("vehicles", "vehicle"),
    ("nature > plants", "plant, flower"), ("nature > landscapes", "geological formation"), ("music", "musical instrument"),
    ("clothing", "clothing"), ("buildings", "structure"), ("furniture", "furniture"), ("sports", "sports equipment"),
    ("things > containers", "container"), ("things > devices", "device"),
)


@functools.cache
def _album_of_class() -> dict[int, str]:
    vocab = Vocabulary.load()
    found: dict[int, str] = {}
    for name, words in ALBUMS:
        for c in vocab.classes_for(words).paths:
            found.setdefault(c, name)
    return found


def album_for(class_index: int) -> str | None:
    """The album of ImageNet class ``class_index`` (0 to 999): ``album_for(207) ==
    "animals > dogs"``; None if no category of :data:`ALBUMS` holds it."""
    return _album_of_class().get(int(class_index))


def coverage() -> dict[str, int]:
    """How many of the 1,000 classes each album holds, in the order of :data:`ALBUMS`."""
    counts = {name: 0 for name, _words in ALBUMS}
    for name in _album_of_class().values():
        counts[name] += 1
    return counts


__all__ = ["ALBUMS", "album_for", "coverage"]
