"""Text in photos (convscope.ocr, index/signals/text.py): pictures of text drawn here, read back with
their boxes; the caps; tolerant matching against an independent edit distance; the ``texts`` table."""
from __future__ import annotations

import random
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from convscope import ocr
from convscope.data import decode_in_workers
from convscope.errors import ConvscopeError
from convscope.index.signals.text import Text, find

needs_engine = pytest.mark.skipif(ocr.available() is not None, reason=str(ocr.available()))
BOLD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def font(size):
    return ImageFont.truetype(str(BOLD), size) if BOLD.exists() else ImageFont.load_default(size=size)


def draw_words(image, lines, at, size, fill):
    """Draws ``lines`` (lists of words) at ``at``; returns each word's box in 0..1 of the image."""
    d = ImageDraw.Draw(image)
    f = font(size)
    boxes = {}
    x0, y = at
    for line in lines:
        x = x0
        for word in line:
            left, top, right, bottom = d.textbbox((x, y), word, font=f)
            d.text((x, y), word, font=f, fill=fill)
            boxes[word] = (left / image.width, top / image.height, right / image.width, bottom / image.height)
            x = right + f.getbbox(" ")[2] + size // 3
        y += int(size * 1.5)
    return boxes


def photo_background(size, seed=0):
    """A photo-like picture with no text: a colour gradient, soft blobs and sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([120 + 80 * xs, 90 + 60 * ys, 140 - 50 * xs * ys], -1)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(image)
    for _ in range(12):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(20, w // 5)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(40, 220, 3)))
    pixels = np.asarray(image, np.int16) + rng.integers(-12, 12, (h, w, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def close_box(found, drawn, slack=0.03):
    return all(abs(a - b) <= slack for a, b in zip(found, drawn))


# --- normalization and matching (no engine) -------------------------------------------------

def test_normalize_folds_case_accents_and_punctuation():
    assert ocr.normalize("Café,") == "cafe"
    assert ocr.normalize("ZÜRICH") == "zurich"
    assert ocr.normalize("Saint-Tropez") == ocr.normalize("saint tropez".replace(" ", "")) == "sainttropez"
    assert ocr.normalize("12.50") == "1250"
    assert ocr.normalize("Straße") == "strasse"
    assert ocr.normalize("...") == ""


def test_match_is_tolerant_by_length():
    # short words exactly; 4-7 letters one edit; 8 and more two edits
    assert ocr.match("bus", ["BUS", "bug", "bus."]) == [("BUS", 1.0), ("bus.", 1.0)]
    assert ocr.match("hotel", ["HOTEI", "HOTL", "H0TE1", "motels", "hotels"]) == [
        ("hotels", pytest.approx(5 / 6)), ("HOTEI", 0.8), ("HOTL", 0.8)]
    found = dict(ocr.match("pharmacy", ["PHARMACV", "PHAPMACV", "PHAPMAGV", "pharmacy"]))
    assert found == {"pharmacy": 1.0, "PHARMACV": 0.875, "PHAPMACV": 0.75}
    assert ocr.match("pharmacy", ["PHAPMACV"], tolerant=False) == []
    assert ocr.match("...", ["anything"]) == []


def _levenshtein(a, b):
    # an independent plain implementation: the full table, no early exit
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[-1][-1]


def test_close_norms_agrees_with_a_plain_edit_distance():
    rng = random.Random(3)
    words = ["".join(rng.choice("abcde") for _ in range(rng.randint(2, 10))) for _ in range(400)]
    for query in words[:60]:
        limit = 0 if len(query) <= 3 else 1 if len(query) <= 7 else 2
        expected = {w for w in words if _levenshtein(query, w) <= limit}
        found = ocr.close_norms(query, words)
        assert {w for w, _ in found} == expected
        assert all(s == pytest.approx(1 - _levenshtein(query, w) / max(len(query), len(w))) for w, s in found)
        assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)


def test_engine_missing_says_why_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)   # the import now fails
    monkeypatch.setattr(ocr, "_missing", [])
    monkeypatch.setattr(ocr, "_engines", {})
    reason = ocr.available()
    assert reason and "\n" not in reason and "rapidocr-onnxruntime" in reason and "convscope[text]" in reason
    assert Text().available() == reason
    with pytest.raises(ConvscopeError, match="rapidocr-onnxruntime"):
        ocr.read_text(Image.new("RGB", (200, 100), "white"))


# --- reading (the engine) ---------------------------------------------------------------------

@needs_engine
def test_reads_a_sign_with_its_words_boxes():
    image = Image.new("RGB", (800, 450), (180, 30, 40))
    drawn = draw_words(image, [["GRAND", "HOTEL"], ["Bakery", "2021"]], (60, 90), 64, "white")
    words = ocr.read_text(image)
    assert [w.text for w in words] == ["GRAND", "HOTEL", "Bakery", "2021"]
    for w in words:
        assert close_box(w.box, drawn[w.text]), (w, drawn[w.text])
        assert 0.8 <= w.confidence <= 1.0
    assert [w.norm for w in words] == ["grand", "hotel", "bakery", "2021"]


@needs_engine
def test_reads_a_sign_on_a_photo_and_nothing_in_the_photo_alone():
    photo = photo_background((900, 650))
    assert [w for w in ocr.read_text(photo) if w.confidence >= 0.8] == []
    sign = Image.new("RGB", (330, 110), (20, 90, 40))
    draw_words(sign, [["PHARMACY"]], (18, 22), 50, "white")
    photo.paste(sign.rotate(4, expand=True, fillcolor=(20, 90, 40)), (480, 120))
    words = ocr.read_text(photo)
    assert "pharmacy" in [w.norm for w in words]
    box = next(w.box for w in words if w.norm == "pharmacy")
    assert 480 / 900 - 0.02 <= box[0] < box[2] <= 830 / 900 and 120 / 650 <= box[1] < box[3] <= 260 / 650


@needs_engine
def test_a_100_megapixel_scan_is_downscaled_first():
    scan = Image.new("1", (10_000, 10_000), 1)   # a bilevel scan, as a document scanner writes it
    ImageDraw.Draw(scan).text((900, 800), "INVOICE", font=font(420), fill=0)
    start = time.perf_counter()
    reading = ocr.read(scan)
    assert time.perf_counter() - start < 20
    assert reading.downscaled and [w.text for w in reading.words] == ["INVOICE"]
    assert close_box(reading.words[0].box, (0.09, 0.08, 0.28, 0.13), slack=0.03)


@needs_engine
def test_words_are_capped_to_the_most_confident():
    image = Image.new("RGB", (900, 300), "white")
    draw_words(image, [["ONE", "TWO", "THREE", "FOUR"]], (40, 100), 60, "black")
    everything = ocr.read(image)
    capped = ocr.read(image, max_words=2)
    assert len(everything.words) == 4 and capped.dropped == 2
    best = sorted(everything.words, key=lambda w: -w.confidence)[:2]
    assert sorted(w.text for w in capped.words) == sorted(w.text for w in best)


@needs_engine
def test_odd_pictures_give_no_words_and_no_error():
    assert ocr.read_text(Image.new("RGB", (8, 8), "white")) == []
    assert ocr.read_text(Image.new("RGB", (4000, 12), "white")) == []
    assert ocr.read_text(Image.new("RGB", (100_000, 20), "white")) == []   # a strip, thinner than one pixel at 640
    for mode in ("L", "RGBA", "P", "1", "I;16", "CMYK"):
        assert ocr.read_text(Image.new(mode, (300, 200))) == []


@needs_engine
def test_gate_stops_a_photo_without_text_before_the_recognizer():
    photo = photo_background((1000, 750), seed=4)
    assert ocr.read(photo).gated
    sign = photo_background((1000, 750), seed=4)
    draw_words(sign, [["MUSEUM"]], (200, 300), 90, "white")
    assert ocr.has_text(sign, pages=False)   # the detector sees it at the gate's size
    reading = ocr.read(sign)
    assert not reading.gated and [w.text for w in reading.words] == ["MUSEUM"]
    # small print on a page: invisible at the gate's size, but the page passes as a page
    page = Image.new("RGB", (1000, 750), (250, 250, 248))
    draw_words(page, [["Invoice", "number"], ["Total", "amount"]], (60, 60), 12, "black")
    assert not ocr.has_text(page, pages=False) and ocr.has_text(page)
    assert [w.norm for w in ocr.read(page).words] == ["invoice", "number", "total", "amount"]


class _Signs(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        image = Image.new("RGB", (600, 200), "white")
        draw_words(image, [[["LIBRARY"], ["GARDEN"]][i]], (40, 60), 60, "black")
        engine = ocr._engine()
        threads = engine.text_det.infer.session.get_session_options().intra_op_num_threads
        return [w.text for w in ocr.read_text(image)], threads


@needs_engine
def test_reads_in_decoding_workers_with_one_thread_each():
    ocr.read_text(Image.new("RGB", (100, 100)))   # the parent holds an engine before the fork
    out = list(decode_in_workers(_Signs(), workers=2))
    assert out == [(["LIBRARY"], 1), (["GARDEN"], 1)]


# --- the signal and its table ---------------------------------------------------------------------

def _index(entries, rows):
    conn = sqlite3.connect(":memory:")
    conn.executescript(Text.tables)
    Text().insert(conn, rows, entries)
    return conn


def _word(text, box=(0.1, 0.2, 0.3, 0.4), confidence=0.9):
    return ocr.Word(text, box, confidence)


def test_table_insert_find_and_copy():
    entries = [{"text": [_word("PHARMACY"), _word("Open")]}, {"text": []},
               {"text": [_word("PHARMACV", (0.5, 0.5, 0.9, 0.6), 0.7), _word("Café")]}]
    conn = _index(entries, [10, 11, 12])
    hits = find(conn, "Pharmacy")
    assert [(h.row, h.word, h.similarity) for h in hits] == [(10, "PHARMACY", 1.0), (12, "PHARMACV", 0.875)]
    assert hits[1].box == (0.5, 0.5, 0.9, 0.6) and hits[1].confidence == pytest.approx(0.7)
    assert [h.row for h in find(conn, "pharmacy", tolerant=False)] == [10]
    assert [(h.row, h.word) for h in find(conn, "CAFE")] == [(12, "Café")]
    assert find(conn, "zoo") == [] and find(conn, "!!") == []
    assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'texts' "
                        "AND sql LIKE '%norm%'").fetchone() == ("texts_norm",)

    new = sqlite3.connect(":memory:")
    new.executescript(Text.tables)
    Text().copy(conn, new, 11, 13, 0)   # entries 11 and 12 become 0 and 1
    assert new.execute("SELECT row, word, norm FROM texts ORDER BY rowid").fetchall() == [
        (1, "PHARMACV", "pharmacv"), (1, "Café", "cafe")]
    Text().copy(sqlite3.connect(":memory:"), new, 0, 5, 7)   # an index built without text
    assert new.execute("SELECT count(*) FROM texts").fetchone() == (2,)
    assert find(sqlite3.connect(":memory:"), "cafe") == []


@needs_engine
def test_signal_entry_reads_the_picture_and_its_rows_find_it():
    image = Image.new("RGB", (640, 360), (240, 220, 40))
    drawn = draw_words(image, [["STATION"]], (80, 120), 80, (10, 10, 10))
    entry = Text().entry(image)
    assert entry["text_dropped"] == 0 and [w.text for w in entry["text"]] == ["STATION"]
    conn = _index([entry], [3])
    (hit,) = find(conn, "statlon")   # an OCR-like misreading in the query still finds it
    assert hit.row == 3 and hit.word == "STATION" and close_box(hit.box, drawn["STATION"])
