"""Words for what the network sees: WordNet's nouns above the 1,000 ImageNet classes, offline.

:mod:`.wordnet` reads a query ("dog", "sports cars") as ImageNet classes with their WordNet
paths; :mod:`.everyday` maps the words people type into photo apps ("beach", "kids") to the
classes that are evidence for them, with why; :mod:`.albums` files each class under a readable category ("animals > dogs").
"""
from .albums import ALBUMS, album_for
from .everyday import EverydayWords, Evidence, unseen_note
from .wordnet import NoClassError, QueryMatch, Synset, Vocabulary, normalize

__all__ = ["ALBUMS", "EverydayWords", "Evidence", "NoClassError", "QueryMatch", "Synset", "Vocabulary",
           "album_for", "normalize", "unseen_note"]
