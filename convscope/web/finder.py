"""What the search pages show, as JSON-ready dicts read from an index, and which of its files
the server may hand out.

One :class:`Finder` wraps one open :class:`~convscope.index.Index`: keyword, like and unit
results with their thumbnails, "more like this" links and the why; duplicate groups; albums;
and the pictures of why (Grad-CAM of the matched class, or the unit's receptive field), made
on request and cached. The server sends these dicts as JSON and renders them into HTML, so the
two cannot drift.

Files: only files of the index that lie inside its roots (:class:`Roots`, the folders and
files it was built from, symbolic links resolved) are served, as thumbnails (the JPEGs stored
in the index), originals, or pictures made from them; a request names an entry row or a file
id, never a path, and a path given to "more like this" must be one the index records.

>>> finder = Finder(Index.open("photos.index"), model=lambda: load_model())
>>> finder.search("cat", top=5)["results"][0]["why"][0]["label"]
'tabby'
"""
from __future__ import annotations

import collections
import datetime
import math
import os
import re
import stat
import threading
from typing import Callable
from urllib.parse import quote

import numpy as np

from ..data import load_image
from ..errors import ConvscopeError, ImageError
from ..files import printable_path
from ..index import parse_unit
from ..index.explain import entry_image, why_picture
from ..index.search import MIN_SCORE
from .common import Memo, NotFound, jpeg, parse_number
from .render import Links

#: Results on one page unless ``top`` says otherwise, and the most ``top`` may ask for.
TOP = 40
MAX_TOP = 1000
#: Files shown per album on the albums page (the album's own page shows them all).
ALBUM_PREVIEW = 8
#: Pictures of why kept in memory (JPEGs of about 20 kB).
PICTURE_CACHE = 512
#: Originals handed out as they are (browsers show them); other photos are decoded and sent as
#: JPEG, at most :data:`MAX_SIDE` pixels on their long side.
BROWSER_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".jpe": "image/jpeg", ".jfif": "image/jpeg", ".png": "image/png",
    ".gif": "image/gif", ".webp": "image/webp", ".bmp": "image/bmp", ".avif": "image/avif",
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime",
    ".mkv": "video/x-matroska", ".avi": "video/x-msvideo",
}
MAX_SIDE = 2048
_GLOB = re.compile(r"[*?\[]")


class Forbidden(ConvscopeError, PermissionError):
    """A file of the index that lies outside its roots (reached through a symbolic link)."""

    status = 403


# --------------------------------------------------------------------------- roots


def _literal_folder(pattern: str) -> str:
    """The folder a glob pattern searches from: its path up to the first part with a wildcard."""
    parts = pattern.split(os.sep)
    for i, part in enumerate(parts):
        if _GLOB.search(part):
            return os.sep.join(parts[:i]) or os.sep
    return pattern


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class Roots:
    """The folders and files an index was built from (``meta["inputs"]``): a folder, a file, a
    glob's folder. A file lies inside them when its real path (every symbolic link resolved)
    is a root's real path or under it. A file named by an ``@LIST`` file is its own root, as
    long as it is not itself a link (the list's folder says nothing of where its files are).

    >>> Roots(["/photos", "/clips/*.mp4"]).allows("/photos/2021/rex.jpg")
    True
    """

    def __init__(self, inputs):
        self.recorded: list[str] = []
        self.real: list[str] = []
        self.listed = False
        for item in inputs:
            item = str(item)
            if item.startswith("@"):
                self.listed = True
                continue
            base = os.path.normpath(_literal_folder(item))
            self.recorded.append(base)
            self.real.append(os.path.realpath(base))

    def allows(self, path: str) -> bool:
        """Whether the file at ``path`` (as the index records it) may be served."""
        real = os.path.realpath(path)
        if any(_inside(real, root) for root in self.real):
            return True
        if self.listed:
            return real == os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        return False

    def display(self, path: str) -> str:
        """A short name for people: the path under its root folder (``2021/rex.jpg``), after
        the root folder's name where there are several (``photos/2021/rex.jpg``); a file
        root's own name. As :func:`~convscope.files.printable_path` shows it: a byte that is
        not UTF-8 as ``\\xe9``, a control character escaped."""
        return printable_path(self._display(path))

    def _display(self, path: str) -> str:
        best = None
        for root in self.recorded:
            if _inside(path, root) and (best is None or len(root) > len(best)):
                best = root
        if best is None or best == path:
            return os.path.basename(path)
        rel = os.path.relpath(path, best).replace(os.sep, "/")
        head = os.path.basename(best.rstrip(os.sep)) if len(self.recorded) > 1 else ""
        return f"{head}/{rel}" if head else rel


def clock(seconds: float | None) -> str | None:
    """Seconds into a video for people: ``75.0`` -> ``1:15``, ``3725`` -> ``1:02:05``; tenths kept."""
    if seconds is None or not math.isfinite(seconds):
        return None
    whole = int(seconds)
    tenths = round((seconds - whole) * 10)
    if tenths == 10:
        whole, tenths = whole + 1, 0
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    text = f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
    return text + (f".{tenths}" if tenths else "")


def close_matches(message: str) -> list[str]:
    """The close matches an unknown-word error lists (``... Close matches: dingo, dog.``), to
    offer as links."""
    found = re.search(r"Close matches: (.+?)\.(?: |$)", message)
    return [w.strip() for w in found.group(1).split(",") if w.strip()] if found else []


# --------------------------------------------------------------------------- the finder


class Finder:
    """Read-only page data for one index; safe to share between request threads.

    ``model()`` returns the index's model (loaded on first use): it draws the receptive-field
    boxes of unit results and the pictures of why. ``links``: the server's URLs.
    """

    def __init__(self, index, model: Callable[[], object], links: Links | None = None):
        self.index = index
        self.model = model
        self.roots = Roots(index.meta.get("inputs") or [])
        self.links = links or Links()
        self._cached = Memo()  # page data, by name
        self._lock = threading.Lock()  # of the pictures of why, most recent last
        self._pictures: collections.OrderedDict = collections.OrderedDict()

    # ------------------------------------------------------------------ records and files

    def record(self, file_id: int | str) -> dict:
        """The file record of ``file_id`` (a number, or its text in a URL: range-checked by
        :func:`~convscope.web.common.parse_number`; the index keeps those it has read)."""
        file_id = parse_number(file_id, "file")
        try:
            return self.index.files([file_id])[file_id]
        except KeyError:
            raise NotFound(f"there is no file {file_id} in this index") from None

    def entry(self, row: int | str) -> tuple[dict, float | None]:
        """The file record of entry ``row`` (a number, or its text in a URL) and the entry's time
        (None for a photo)."""
        row = parse_number(row, "entry", stop=self.index.entries)
        t = float(self.index.entry_time[row])
        return self.record(int(self.index.entry_file[row])), (None if math.isnan(t) else t)

    def check_served(self, record: dict) -> None:
        if not self.roots.allows(record["path"]):
            raise Forbidden(f"{_shown(record['path'])} lies outside the folders this index was built from "
                            "(it is reached through a link); it is not served")

    def _on_disk(self, record: dict) -> str:
        self.check_served(record)
        real = os.path.realpath(record["path"])
        try:
            regular = stat.S_ISREG(os.stat(real).st_mode)
        except OSError:
            regular = False
        if not regular:
            raise NotFound(f"{_shown(record['path'])} is no longer on disk")
        return real

    def thumbnail(self, row: int | str) -> bytes:
        """The JPEG the index stored for entry ``row`` (a number, or its text in a URL)."""
        row = parse_number(row, "entry", stop=self.index.entries)
        record, _ = self.entry(row)
        self.check_served(record)
        return self.index.thumbnail(row)

    def original(self, file_id: int, name: str) -> tuple[str, str | None, bytes | None]:
        """An original to hand out: (path, media type, None) for a format browsers show, else
        (name, "image/jpeg", JPEG bytes of it decoded, upright, at most :data:`MAX_SIDE` px).
        ``name``: the file's name, or (one that is not valid UTF-8) as
        :func:`~convscope.files.printable_path` shows it (the id says which file)."""
        record = self.record(file_id)
        if name not in (os.path.basename(record["path"]), _shown(record["path"])):
            raise NotFound(f"file {file_id} of this index is not called '{printable_path(name[:80])}'")
        real = self._on_disk(record)
        suffix = os.path.splitext(real)[1].lower()
        if suffix in BROWSER_TYPES:
            return real, BROWSER_TYPES[suffix], None
        image = load_image(real, target_size=MAX_SIDE)  # a large JPEG decoded at reduced scale
        image.thumbnail((MAX_SIDE, MAX_SIDE))
        return name, "image/jpeg", jpeg(image, quality=90)

    # ------------------------------------------------------------------ results

    def _hit(self, r, mode: str, unit: str | None = None) -> dict:
        file_id = int(self.index.entry_file[r.entry])
        record = self.index.files([file_id])[file_id]
        served = self.roots.allows(record["path"])
        top = self._top(r.entry)
        out = r.to_json()
        out.update(
            entry=r.entry, file_id=file_id, kind=record["kind"], name=self.roots.display(record["path"]),
            when=None if r.time is None else "–".join(c for c in (clock(r.time), clock(r.end)) if c),
            date=_day(r.date),
            top=top, thumb=self.links.thumb(r.entry) if served else None,
            file=self.links.file(file_id, record["path"], r.time) if served else None,
            like=self.links.like(record["path"], r.time) if served else None,
        )
        if mode == "unit":
            out["position"] = list(r.position) if r.position is not None else None
            out["explain"] = self.links.explain(r.entry, unit=unit) if served else None
            out["explain_title"] = f"receptive field of unit {unit}"
        else:
            seen = [w.index for w in r.why if getattr(w, "index", None) is not None]
            cls = seen[0] if seen else (top["index"] if top else -1)
            out["text_boxes"] = _text_boxes(r.why, record)
            out["explain"] = self.links.explain(r.entry, cls=cls) if served and cls >= 0 else None
            out["explain_title"] = f"Grad-CAM: where the network saw {self.index.labels[cls]}" if cls >= 0 else None
            taught = next((w.concept for w in r.why if getattr(w, "kind", None) == "concept"), None)
            if taught is not None and served:  # a taught concept: the Grad-CAM of its own score
                out["explain"] = f"/concepts/{quote(taught, safe='')}/why/{int(r.entry)}.jpg"
                out["explain_title"] = f"Grad-CAM: where the network saw {taught}"
        return out

    def _top(self, row: int) -> dict | None:
        """The most probable class of entry ``row``: index, label, probability."""
        c, p = int(self.index.top_class[row][0]), float(self.index.top_prob[row][0])
        return {"index": c, "label": self.index.labels[c], "probability": round(p, 4)} if c >= 0 else None

    def _page(self, mode: str, query: dict, results: list, top: int, unit: str | None = None) -> dict:
        more = len(results) > top
        return {"mode": mode, "query": query, "count": min(len(results), top), "more": more,
                "results": [self._hit(r, mode, unit) for r in results[:top]]}

    def search(self, q: str, *, top: int = TOP, min_score: float = MIN_SCORE, sort: str = "score") -> dict:
        """Keyword results: the entries whose matched classes hold at least ``min_score`` of
        the probability, by score or date; each with its why."""
        q = " ".join(str(q).split())
        if not re.search(r"\w", q):
            raise ValueError(f"the query {q!r} holds no word; give one such as dog")
        results = self.index.search(q, top=top + 1, min_score=min_score, sort=sort)
        return self._page("keyword", {"q": q, "min_score": min_score, "sort": sort, "top": top}, results, top)

    def like(self, path: str, *, time: float | None = None, top: int = TOP) -> dict:
        """The entries most like an indexed file (for a video, its frame nearest ``time``)."""
        record = self.index.file_of(path) if os.path.isabs(path) else None
        if record is None:
            raise NotFound(f"'{printable_path(os.path.basename(path)[:80] or path[:80])}' is not a file of this index; "
                           "more like this takes a path the index records (a result's \"path\")")
        self.check_served(record)
        results = self.index.like(record["path"], top=top + 1, time=time)
        query = {"like": record["path"], "name": self.roots.display(record["path"]), "t": time, "top": top,
                 "thumb": self.links.thumb(self.index.row_at(record, time))}
        return self._page("like", query, results, top)

    def unit(self, text: str, *, top: int = TOP) -> dict:
        """The entries that excite one unit most (``LAYER:UNIT``), each with its receptive-field
        box on the model input. Loads the model: call it on the model thread."""
        from ..index import parse_unit

        layer, unit = parse_unit(text)
        self.index.layer(layer)  # an unknown layer: close matches, before the model loads
        results = self.index.unit(layer, unit, top=top + 1, model=self.model())
        return self._page("unit", {"unit": f"{layer}:{unit}", "layer": layer, "index": unit, "top": top}, results, top,
                          unit=f"{layer}:{unit}")

    def home(self) -> dict:
        """What the index holds, words to try, and the layers a unit search can ask for."""

        def build():
            info = self.index.info()
            return {
                "index": {k: info[k] for k in ("entries", "photos", "videos", "skipped", "model", "built", "fps")},
                "layers": [{"name": l["name"], "units": l["shape"][0]} for l in self.index.layers],
                "suggestions": self._suggestions(),
            }

        return self._cached("home", build)

    def _suggestions(self, n: int = 10) -> list[str]:
        """The most common confident top classes of the index, as words the search knows."""
        if len(self.index.labels) != 1000 or not self.index.entries:
            return []
        from ..vocab import Vocabulary

        vocab = Vocabulary.load()
        top_c = np.asarray(self.index.top_class[:, 0]).astype(np.int64)
        sure = np.asarray(self.index.top_prob[:, 0], np.float32) >= 0.3
        counts = np.bincount(top_c[sure & (top_c >= 0)], minlength=1000)
        words = []
        for c in np.argsort(-counts, kind="stable"):
            if counts[c] == 0 or len(words) == n:
                break
            word = self.index.labels[c]
            try:
                vocab.classes_for(word)
            except ConvscopeError:
                continue
            if word not in words:
                words.append(word)
        return words

    # ------------------------------------------------------------------ files grouped

    def _file_card(self, record: dict) -> dict:
        served = self.roots.allows(record["path"])
        row = record["first_row"]
        return {
            "path": record["path"], "name": self.roots.display(record["path"]), "kind": record["kind"],
            "file_id": record["id"], "size": record["size"], "width": record["width"], "height": record["height"],
            "duration": record["duration"], "sha256": record["sha256"],
            "top": self._top(row), "thumb": self.links.thumb(row) if served else None,
            "file": self.links.file(record["id"], record["path"]) if served else None,
            "like": self.links.like(record["path"]) if served else None,
        }

    def cards(self, paths) -> list[dict]:
        """The cards of the indexed files at ``paths`` (those the index has), in that order."""
        by_path = self._by_path()
        return [self._file_card(by_path[p]) for p in paths if p in by_path]

    def _by_path(self) -> dict[str, dict]:
        return self._cached("by_path", lambda: {f["path"]: f for f in self.index.files().values()})

    def duplicates(self) -> dict:
        """Groups of duplicate files (:meth:`convscope.index.Index.duplicates`), copies then
        similar ones, each with its ``kind``, its ``threshold`` (and ``rule``, in words, as it
        is applied to every pair) and ``pairs``; each file with its thumbnail and size; after
        the group's first, the earlier file of the group it is a byte-exact copy of
        (``copy_of``, its name, or None), and its evidence to the first: the cosine of the
        embeddings (``cosine``) and, for copies, the perceptual hash's bits apart (``bits``).
        ``note``: a line where the index has no perceptual hashes, or None."""

        def build():
            from ..index.duplicates import rule

            by_path = self._by_path()
            groups, notes = [], []
            for n, group in enumerate(self.index.duplicates(on_note=notes.append), 1):
                files = [self._file_card(by_path[p]) for p in group["paths"]]
                to_first = {p["b"]: p for p in group["pairs"] if p["a"] == 0}
                for i, f in enumerate(files[1:], 1):
                    same = next((g for g in files[:i] if g["sha256"] == f["sha256"]), None)
                    f["copy_of"] = same["name"] if same is not None else None
                    f["cosine"] = to_first[i]["cosine"]
                    f["bits"] = to_first[i].get("bits")
                groups.append({"group": n, "kind": group["kind"], "threshold": group["threshold"], "rule": rule(group),
                               "pairs": group["pairs"], "paths": group["paths"], "files": files})
            return {"groups": groups, "files": len(by_path), "note": notes[0] if notes else None,
                    "copies": sum(g["kind"] == "copies" for g in groups),
                    "similar": sum(g["kind"] == "similar" for g in groups)}

        return self._cached("duplicates", build)

    def albums(self) -> dict:
        """Albums (:meth:`convscope.index.Index.albums`): name, kind, size, and their covers (the
        most typical files, with why)."""
        full = self._albums()  # a preview: the covers first, then the album's other files
        albums = [{**a, "files": (a["cover_files"] + [f for f in a["files"] if f["path"] not in a["covers"]])[:ALBUM_PREVIEW]}
                  for a in full]
        return {"albums": albums, "files": len(self._by_path())}

    def album(self, name: str) -> dict:
        """One album and all its files; :class:`NotFound` with the albums there are otherwise."""
        from ..errors import unknown_name_error

        for a in self._albums():
            if a["album"] == name:
                return a
        raise unknown_name_error("album", name, [a["album"] for a in self._albums()], cls=NotFound,
                                 hint="See /albums for this index's albums.")

    def _albums(self) -> list[dict]:
        def build():
            by_path = self._by_path()
            return [{"album": a["album"], "kind": a["kind"], "count": len(a["paths"]), "url": self.links.album(a["album"]),
                     "paths": a["paths"], "covers": a["covers"], "why": a["why"],
                     "cover_files": [self._file_card(by_path[p]) for p in a["covers"]],
                     "files": [self._file_card(by_path[p]) for p in a["paths"]]}
                    for a in self.index.albums()]

        return self._cached("albums", build)

    # ------------------------------------------------------------------ pictures of why

    def picture(self, row: int, *, cls: int | None = None, unit: str | None = None) -> bytes:
        """JPEG: the Grad-CAM of class ``cls`` over entry ``row`` as the model sees it, or (with
        ``unit``, ``LAYER:UNIT``) the unit's receptive-field box at its maximum on that entry.
        Made on first request, then cached. Runs the model: call it on the model thread."""
        row = parse_number(row, "entry", stop=self.index.entries)
        key = (row, cls, unit)
        with self._lock:
            if key in self._pictures:
                self._pictures.move_to_end(key)
                return self._pictures[key]
        record, time = self.entry(row)
        if unit is None and not (isinstance(cls, int) and 0 <= cls < len(self.index.labels)):
            raise ValueError(f"class must be a class index from 0 to {len(self.index.labels) - 1}, got {cls!r}")
        model = self.model()
        box = None
        if unit is not None:  # a bad unit fails before the file is read
            box = self.index.unit_at(*parse_unit(unit), row, model=model)[1]
        path = self._on_disk(record)
        try:  # a JPEG decodes at the scale the model needs (as the index did)
            image = entry_image(path, time if record["kind"] == "video" else None, resize=model.preprocessing.resize)
        except ImageError as exc:
            raise NotFound(f"{_shown(path)} can no longer be read ({exc.reason})") from None
        data = jpeg(why_picture(model, image, cls=cls, box=box))
        with self._lock:
            self._pictures[key] = data
            while len(self._pictures) > PICTURE_CACHE:
                self._pictures.popitem(last=False)
        return data


def _shown(path: str) -> str:
    """A file's name in a message or a URL: as :func:`~convscope.files.printable_path` shows it."""
    return printable_path(os.path.basename(path))


def _day(seconds: float | None) -> str | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d")


def _text_boxes(why, record: dict) -> list[dict]:
    """The boxes of the words read in a photo that a result matched, as percentages of the
    square tile that shows its thumbnail (``object-fit: cover``: the middle of a long side)."""
    width, height = record.get("width") or 1, record.get("height") or 1
    aspect = width / height
    out = []
    for w in why:
        if getattr(w, "kind", None) != "text":
            continue
        left, top, right, bottom = w.box
        if aspect >= 1:
            left, right = (v * aspect - (aspect - 1) / 2 for v in (left, right))
        else:
            top, bottom = (v / aspect - (1 / aspect - 1) / 2 for v in (top, bottom))
        out.append({"text": w.text, "left": round(100 * left, 2), "top": round(100 * top, 2),
                    "width": round(100 * (right - left), 2), "height": round(100 * (bottom - top), 2)})
    return out
