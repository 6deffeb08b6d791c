"""Text in photos: the words written in a picture (signs, documents, receipts, screenshots),
their boxes and the engine's confidence, and the tolerant matching of a query word against them.

The engine is RapidOCR (``rapidocr-onnxruntime``: PaddleOCR's PP-OCRv4 detector and recognizer
as ONNX models inside the wheel, run by onnxruntime), an optional dependency (``pip install
'convscope[text]'``); :func:`available` says in one line why it cannot run. BENCHMARKS.md ("Text in photos") has the
measurements that chose it over Tesseract and set the constants below.

What a picture may cost is capped: a picture over :data:`MAX_PIXELS` is downscaled first, a cheap
look at :data:`GATE_SIDE` pixels decides whether the picture holds text at all (most photos do
not: the detector alone, no recognizer), and at most :data:`MAX_WORDS` words are kept.

>>> words = read_text(Image.open("shop.jpg"))
>>> [(w.text, w.box) for w in words]          # [('BAKERY', (0.31, 0.12, 0.58, 0.2)), ...]
>>> match("bakkery", [w.norm for w in words])  # [('bakery', 0.857...)]
"""
from __future__ import annotations

import dataclasses
import os
import re
import unicodedata
from typing import Iterable

import numpy as np
from PIL import Image

from .errors import ConvscopeError

#: A picture with more pixels is downscaled to this many before anything else (a 100-megapixel
#: scan costs what a 4-megapixel photo does, and its pixels are not held three times).
MAX_PIXELS = 4_000_000
#: The longest side the detector sees of a picture that passed the gate. Larger is not better:
#: at 960 it joins the words of small print into one (screenshots' word recall 0.65, 0.99 at 640).
DETECT_SIDE = 640
#: The longest side of the gate's look, the detector alone (0: no gate, detect at DETECT_SIDE).
GATE_SIDE = 256
#: A picture with at least this fraction of its pixels of one colour is a page or a screen to the
#: gate: it goes on to the detector at full size (receipts, screenshots: 0.48 to 0.73; 23 of the
#: 500 dev photos, product shots on white, pass too).
PAGE_FRACTION = 0.45
#: The most words kept of one picture, the most confident (a page of small print, a texture
#: the recognizer reads as letters); :attr:`Reading.dropped` counts the rest.
MAX_WORDS = 100
#: Recognized lines below this confidence (0..1) are dropped.
MIN_CONFIDENCE = 0.6
#: A picture whose shorter side is under this many pixels holds no readable text.
MIN_SIDE = 16

_PACKAGE = "rapidocr-onnxruntime"


class TextEngineMissing(ConvscopeError):
    """The OCR engine is not installed here; the message says what to install."""


@dataclasses.dataclass(frozen=True)
class Word:
    """A recognized word: ``text`` as read, ``box`` (left, top, right, bottom) as fractions 0..1
    of the picture's width and height (so it can be drawn on any size of it), ``confidence`` 0..1."""

    text: str
    box: tuple[float, float, float, float]
    confidence: float

    @property
    def norm(self) -> str:
        """The word as matching sees it (:func:`normalize`)."""
        return normalize(self.text)


@dataclasses.dataclass(frozen=True)
class Reading:
    """What :func:`read` found in one picture: the words kept, the number ``dropped`` over
    :data:`MAX_WORDS`, ``downscaled`` if the picture was over :data:`MAX_PIXELS`, and ``gated``
    if the gate's look found no text (the recognizer did not run)."""

    words: list[Word]
    dropped: int = 0
    downscaled: bool = False
    gated: bool = False


def normalize(text: str) -> str:
    """``text`` as matching compares it: accents removed, case folded, everything but letters and
    digits dropped (``"Café,"`` -> ``"cafe"``, ``"12.50"`` -> ``"1250"``, ``"Saint-Tropez"`` ->
    ``"sainttropez"``). A query word goes through the same function."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if c.isalnum() and not unicodedata.combining(c))


def tolerance(norm: str) -> int:
    """Edit operations a query word of this (normalized) length may differ by from a recognized
    word: none up to 3 characters, 1 up to 7, 2 beyond (BENCHMARKS.md ("Text in photos") measures the choice)."""
    return 0 if len(norm) <= 3 else 1 if len(norm) <= 7 else 2


def distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of ``a`` and ``b``, or ``limit + 1`` as soon as it must exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def similarity(query: str, norm: str) -> float:
    """How alike two normalized words are, 1.0 for equal, or 0.0 beyond the query's :func:`tolerance`."""
    limit = tolerance(query)
    d = distance(query, norm, limit)
    return 0.0 if d > limit else 1.0 - d / max(len(query), len(norm))


def match(query: str, words: Iterable[str | Word], *, tolerant: bool = True) -> list[tuple[str | Word, float]]:
    """The recognized ``words`` (Word, or their text) that the query word matches, with their
    similarity (1.0 exact), best first. Both sides are :func:`normalize`\\ d; with ``tolerant``, a
    word within the query's :func:`tolerance` of edits matches (OCR misreads a letter or two).

    >>> match("pharmacy", ["PHARMACV", "open", "Pharmacy!"])
    [('Pharmacy!', 1.0), ('PHARMACV', 0.875)]
    """
    q = normalize(query)
    if not q:
        return []
    found = []
    for word in words:
        norm = word.norm if isinstance(word, Word) else normalize(word)
        score = similarity(q, norm) if tolerant else float(q == norm)
        if score > 0:
            found.append((word, score))
    return sorted(found, key=lambda pair: -pair[1])


def close_norms(query: str, norms: Iterable[str], *, tolerant: bool = True) -> list[tuple[str, float]]:
    """The distinct normalized words of an index (``norms``) within the query's tolerance, with
    their similarity, best first: what an index looks up its rows by (``WHERE norm IN ...``)."""
    q = normalize(query)
    if not q:
        return []
    if not tolerant:
        return [(q, 1.0)] if q in set(norms) else []
    limit = tolerance(q)
    found = [(n, s) for n in set(norms) if abs(len(n) - len(q)) <= limit and (s := similarity(q, n)) > 0]
    return sorted(found, key=lambda pair: (-pair[1], pair[0]))


# --- the engine -------------------------------------------------------------------------------

_missing: list[str] = []   # the one-line reason, once found (per process)
_engines: dict[int, object] = {}   # pid -> the engine: a forked worker never uses its parent's


def available() -> str | None:
    """None if text can be read here, else the one-line reason (the engine is not installed)."""
    if not _missing:
        try:
            import rapidocr_onnxruntime  # noqa: F401  (the import is the check)
            _missing.append("")
        except ImportError as exc:
            _missing.append(f"reading text in photos needs the optional package {_PACKAGE} "
                            f"(pip install 'convscope[text]'): {exc}")
    return _missing[0] or None


def _engine():
    """This process's engine, loaded once. One onnxruntime thread: a build reads text in its
    decoding workers, one per core, and more threads each would only fight over the cores."""
    engine = _engines.get(os.getpid())
    if engine is None:
        reason = available()
        if reason:
            raise TextEngineMissing(reason)
        from rapidocr_onnxruntime import RapidOCR
        engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1, use_cls=False,
                          det_limit_type="max", det_limit_side_len=DETECT_SIDE)
        _engines.clear()
        _engines[os.getpid()] = engine
    return engine


def _capped(image: Image.Image, max_pixels: int) -> Image.Image:
    """``image`` in RGB with at most ``max_pixels`` pixels: a big picture is shrunk in its own
    mode before it is converted (a bilevel or grey scan is not first tripled into RGB)."""
    w, h = image.size
    if w * h > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        if image.mode not in ("L", "RGB", "RGBA", "I", "F"):
            # "1" and "P" resize only with NEAREST: take twice the size, then average
            image = image.resize((size[0] * 2, size[1] * 2), Image.Resampling.NEAREST).convert("RGB")
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image.convert("RGB")


def _bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])


def _shrunk(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BILINEAR, reducing_gap=2.0)


def _detect(image: Image.Image, side: int) -> list[np.ndarray]:
    """The detector's text boxes (4 corner points each, in ``image``'s pixels, reading order),
    shown ``image`` at most ``side`` pixels on its longest side. (Its own resize is no cap: it
    raises its limit to 2,000 pixels for a big picture.)"""
    small = _shrunk(image, side)
    engine = _engine()
    boxes, _ = engine.text_det(_bgr(small))
    if boxes is None or len(boxes) == 0:
        return []
    scale = np.array([image.width / small.width, image.height / small.height], np.float32)
    return [np.asarray(box, np.float32) * scale for box in engine.sorted_boxes(boxes)]


def has_text(image: Image.Image, side: int = GATE_SIDE, *, pages: bool = True) -> bool:
    """The gate: whether the detector, shown ``image`` at ``side`` pixels on its longest side,
    sees any text box, or (with ``pages``) the picture looks like a page or a screen (at least
    :data:`PAGE_FRACTION` of it one colour), whose small print is lost at that size.
    BENCHMARKS.md ("Text in photos") says what it costs and what it misses."""
    small = _shrunk(image.convert("RGB"), side)
    return (pages and _page_like(small)) or bool(_detect(small, side))


def _page_like(image: Image.Image) -> bool:
    levels = np.asarray(image, np.uint8) >> 4   # 16 levels a channel: paper, not its grain
    codes = (levels[..., 0].astype(np.int32) << 8 | levels[..., 1].astype(np.int32) << 4 | levels[..., 2]).ravel()
    return np.bincount(codes).max() >= PAGE_FRACTION * codes.size


def read(image: Image.Image, *, max_pixels: int = MAX_PIXELS, gate_side: int = GATE_SIDE,
         max_words: int = MAX_WORDS) -> Reading:
    """The words written in ``image`` (any PIL image), with their boxes, in reading order.

    A picture over ``max_pixels`` is downscaled first. The detector looks at it at
    :data:`DETECT_SIDE` pixels; where that is at least twice ``gate_side`` (0: no gate), it first
    looks at a copy that small and, seeing no text, stops there. The recognizer reads each box
    from the picture's own pixels; ``max_words`` keeps the most confident words. Raises
    :class:`TextEngineMissing` where :func:`available` says why.
    """
    engine = _engine()
    if min(image.size) < MIN_SIDE:
        return Reading([])
    downscaled = image.width * image.height > max_pixels
    image = _capped(image, max_pixels)
    # the gate pays where the detection would see at least four times its pixels
    if gate_side and min(max(image.size), DETECT_SIDE) >= 2 * gate_side and not has_text(image, gate_side):
        return Reading([], downscaled=downscaled, gated=True)
    boxes = _detect(image, DETECT_SIDE)
    if not boxes:
        return Reading([], downscaled=downscaled)
    crops = engine.get_crop_img_list(_bgr(image), boxes)
    recognized, _ = engine.text_rec(crops, True)
    lines = engine.cal_rec_boxes(crops, boxes, recognized)   # [text, confidence, char boxes, chars, confidences]
    words = [w for box, line in zip(boxes, lines) if line[1] >= MIN_CONFIDENCE
             for w in _line_words([box.tolist(), *line], image.size)]
    if len(words) <= max_words:
        return Reading(words, 0, downscaled)
    kept = set(sorted(range(len(words)), key=lambda i: -words[i].confidence)[:max_words])
    return Reading([w for i, w in enumerate(words) if i in kept], len(words) - max_words, downscaled)


def read_text(image: Image.Image) -> list[Word]:
    """The words written in ``image``, as :func:`read` finds them with its default caps.

    >>> [w.text for w in read_text(Image.open("sign.png"))]   # ['GRAND', 'HOTEL']
    """
    return read(image).words


_SPACE = re.compile(r"\s+")


def _line_words(line, size: tuple[int, int]) -> list[Word]:
    """A recognized line (RapidOCR's [box, text, confidence, char boxes, chars, char confidences])
    as words: runs of characters between spaces, each boxed by its characters' boxes."""
    points, text, confidence = line[0], line[1], float(line[2])
    boxes = line[3] if len(line) > 3 else []
    pieces = line[4] if len(line) > 4 else []
    confidences = line[5] if len(line) > 5 else []
    words, current, current_boxes, current_confidences = [], [], [], []

    def flush():
        if current and normalize("".join(current)):
            xs = [x for box in current_boxes for x, _ in box] or [p[0] for p in points]
            ys = [y for box in current_boxes for _, y in box] or [p[1] for p in points]
            # a word is as sure as its least sure character (the line's confidence is their mean)
            sure = min(current_confidences) if current_confidences else confidence
            words.append(Word("".join(current), _fractions(xs, ys, size), round(float(sure), 4)))
        current.clear()
        current_boxes.clear()
        current_confidences.clear()

    if not (len(pieces) == len(boxes) == len(confidences)) or "".join(pieces).replace(" ", "") != _SPACE.sub("", text):
        # no character boxes that spell the line: its words share the line's box
        for part in _SPACE.split(text.strip()):
            current.append(part)
            flush()
        return words
    for piece, box, sure in zip(pieces, boxes, confidences):
        for k, part in enumerate(piece.split(" ")):
            if k:
                flush()
            if part:
                current.append(part)
                current_boxes.append(box)
                current_confidences.append(sure)
    flush()
    return words


def _fractions(xs, ys, size) -> tuple[float, float, float, float]:
    w, h = size
    return (round(max(0.0, min(xs) / w), 4), round(max(0.0, min(ys) / h), 4),
            round(min(1.0, max(xs) / w), 4), round(min(1.0, max(ys) / h), 4))
