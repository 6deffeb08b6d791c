"""Index photos and videos once; search them by word, by example and by unit; find duplicates
and make albums (``docs/search.md``).

>>> from convscope import load_model
>>> from convscope.index import Index
>>> index = Index.build(load_model(), ["photos/"], "photos.index")
>>> for r in index.search("dog", top=5):
...     print(r.to_json())
"""
from . import concepts
from .api import Index, parse_unit
from .organize import ALBUM_CONFIDENCE, DUPLICATE_COSINE, album_for
from .search import MIN_SCORE, Result, Why
from .store import IncompleteIndexError

__all__ = ["concepts", "ALBUM_CONFIDENCE", "DUPLICATE_COSINE", "MIN_SCORE", "IncompleteIndexError", "Index", "Result", "Why",
           "album_for", "parse_unit"]
