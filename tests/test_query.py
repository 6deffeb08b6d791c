"""The query grammar over every kind of evidence (issue 21): words the network sees, everyday
words, places and times from the photo's EXIF, combined; each result's why; the one-line notes.

The photos are scikit-image's, with EXIF written here by Pillow (GPS of Lyon, New York and
Sydney; dates; one photo with none), indexed with the embedded default model."""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from convscope.errors import ArgumentError, UnknownWordError
from convscope.index import Index
from convscope.index import query as grammar
from convscope.index import signals
from convscope.models import load_model
from convscope.vocab import EverydayWords

GPS_IFD, EXIF_IFD, DATE_TIME_ORIGINAL = 0x8825, 0x8769, 36867
pytest.importorskip("reverse_geocoder")

PHOTOS = {  # name: (pixels, (lat, lon) or None, EXIF date or None)
    "chelsea": (skimage.data.chelsea, (45.7640, 4.8357), "2015:05:02 14:03:00"),       # a cat, in Lyon
    "astronaut": (skimage.data.astronaut, (40.7128, -74.0060), "2008:07:04 22:30:00"),  # New York, at night
    "coffee": (skimage.data.coffee, (-33.8688, 151.2093), "2019:01:15 08:00:00"),      # Sydney, a summer morning
    "rocket": (skimage.data.rocket, None, None),                                        # nothing: the file's time
}


def _dms(value: float):
    deg = int(abs(value))
    minutes = (abs(value) - deg) * 60
    return (IFDRational(deg, 1), IFDRational(int(minutes), 1), IFDRational(round((minutes - int(minutes)) * 6000), 100))


def write_photos(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (pixels, gps, date) in PHOTOS.items():
        exif = Image.Exif()
        if date:
            exif.get_ifd(EXIF_IFD)[DATE_TIME_ORIGINAL] = date
        if gps:
            exif.get_ifd(GPS_IFD).update({1: "N" if gps[0] >= 0 else "S", 2: _dms(gps[0]),
                                          3: "E" if gps[1] >= 0 else "W", 4: _dms(gps[1])})
        Image.fromarray(pixels()).convert("RGB").save(folder / f"{name}.jpg", exif=exif, quality=92)
    os.utime(folder / "rocket.jpg", (1_300_000_000, 1_300_000_000))  # 2011-03-13, by the file's time
    return folder


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def built(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("query")
    photos = write_photos(root / "photos")
    index = Index.build(model, [photos], root / "index", workers=0, progress=False)
    yield index
    index.close()


def names(results) -> list[str]:
    return [Path(r.path).stem for r in results]


def kinds(result) -> list[str]:
    return [w.kind for w in result.why]


def test_places_are_named_offline_and_stored(built):
    rows = {Path(r["path"]).stem: r for r in built.query("SELECT path, city, region, country, taken_from FROM files")}
    assert (rows["chelsea"]["city"], rows["chelsea"]["country"]) == ("Lyon", "France")
    assert rows["coffee"]["country"] == "Australia" and rows["astronaut"]["country"] == "United States"
    assert rows["rocket"]["city"] is None and rows["rocket"]["taken_from"] == "file"
    assert "place" in built.signals and built.info()["signals"] == list(built.signals)
    tree = {c.name: c for c in built.places()}  # the places page's tree, from the photos' own EXIF
    assert set(tree) == {"France", "United States", "Australia"}
    (region,) = tree["France"].children
    assert region.name == "Auvergne-Rhone-Alpes" and [c.name for c in region.children] == ["Lyon"]
    years = {y.name: y for y in built.timeline()}
    assert {"2015", "2008", "2019", "2011"} <= set(years) and years["2011"].by_file == 1


@pytest.mark.parametrize("query, found", [
    ("lyon", ["chelsea"]), ("france", ["chelsea"]), ("Auvergne-Rhône-Alpes", ["chelsea"]),
    ("new south wales", ["coffee"]), ("2015", ["chelsea"]), ("may 2015", ["chelsea"]), ("2015-05-02", ["chelsea"]),
    ("2015-05-03", []), ("night", ["astronaut"]), ("morning", ["coffee"]),
    ("summer", ["astronaut", "coffee"]),  # July in the north, January in the south
    ("2011", ["rocket"]),  # no EXIF date: the file's time
    ("lyon, sydney", ["chelsea", "coffee"]),
])
def test_places_and_times(built, query, found):
    assert sorted(names(built.search(query, top=10))) == sorted(found)


def test_a_time_word_says_where_the_time_came_from(built):
    (rocket,) = built.search("2011")
    (why,) = rocket.why
    assert why.to_json()["kind"] == "time" and why.source == "file" and "modification time" in why.reason
    (astronaut,) = built.search("night")
    assert "22:30 local time" in astronaut.why[0].reason
    (coffee,) = built.search("summer sydney")
    assert "southern hemisphere" in coffee.why[0].reason and kinds(coffee) == ["time", "place"]


def test_words_side_by_side_narrow_across_kinds(built):
    (chelsea,) = built.search("cat france 2015")
    assert Path(chelsea.path).stem == "chelsea"
    assert kinds(chelsea)[-2:] == ["place", "time"] and set(kinds(chelsea)[:-2]) == {"class"}
    cat = built.search("cat")[0]
    assert chelsea.score == pytest.approx(cat.score)  # a place or a time counts 1
    record = chelsea.to_json()
    place = next(w for w in record["why"] if w["kind"] == "place")
    assert place["city"] == "Lyon" and place["country"] == "France" and abs(place["lat"] - 45.764) < 1e-3
    assert built.search("cat sydney") == [] and built.search("cat 2019") == []


def test_everyday_words_map_to_classes_with_reasons(built):
    words = EverydayWords.load()
    evidence = words.lookup("beach")
    assert evidence is not None and 978 in evidence.reasons  # seashore
    hits = built.search("coffee", min_score=0.2)
    assert names(hits)[:1] == ["coffee"]
    breakfast = words.lookup("breakfast")
    if breakfast is not None and not breakfast.unseen:  # an everyday word the cup is evidence for
        got = built.search("breakfast", min_score=0.05)
        assert all(w.kind in ("word", "class", "text") for r in got for w in r.why)
        assert all(w.reason for r in got for w in r.why if w.kind == "word")


def test_a_users_own_words_file(built, tmp_path):
    extra = tmp_path / "words.json"
    extra.write_text(json.dumps({"words": {"toebeans": {"classes": {"281": {"reason": "our word for a tabby"}}}}}))
    (hit,) = built.search("toebeans", words=str(extra), min_score=0.1)
    assert Path(hit.path).stem == "chelsea" and hit.why[0].kind == "word"
    assert hit.why[0].reason == "our word for a tabby" and hit.why[0].label == "tabby"
    with pytest.raises(UnknownWordError):
        built.search("toebeans")


def test_a_word_the_network_has_no_class_for_says_so_in_one_line(built):
    with pytest.raises(grammar.NoEvidenceError) as err:
        built.search("sunset")
    assert str(err.value) == "the network has no class for 'sunset'; teach it from examples (`convscope teach`)"


def test_a_typo_still_gets_close_matches(built):
    with pytest.raises(UnknownWordError) as err:
        built.search("dgo")
    assert "Close matches:" in str(err.value) and "dog" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UnknownWordError, match="lyon"):
        built.search("lyonn")  # a place of this index is a close match too


def test_query_limits_and_tokens():
    assert grammar.tokens('Dog "OPEN" 2015-05-02, cats') == ["dog", '"OPEN"', "2015-05-02", ",", "cats"]
    assert grammar.plain("Auvergne-Rhône-Alpes") == "auvergne rhone alpes"
    with pytest.raises(ArgumentError):
        grammar.tokens("dog " * 40)
    with pytest.raises(ArgumentError):
        grammar.tokens(12)


def test_alternatives_of_class_words_score_as_one(built):
    """"dog, cat" is one term over both classes' probabilities, as before the grammar."""
    plan = grammar.read(built, "dog, cat")
    assert len(plan.alternatives) == 1 and len(plan.alternatives[0]) == 1
    assert names(built.search("dog, cat"))[0] == "chelsea"


def test_an_update_adds_places_to_an_old_index_without_the_model(tmp_path, model, monkeypatch):
    photos = write_photos(tmp_path / "photos")
    before = tuple(s for s in signals.SIGNALS if s.name != "place")
    monkeypatch.setattr(signals, "SIGNALS", before)
    old = Index.build(model, [photos], tmp_path / "index", workers=0, progress=False)
    assert "place" not in old.signals and "city" not in {r["name"] for r in old.query("PRAGMA table_info(files)")}
    embedding = np.asarray(old.embedding).copy()
    old.close()
    monkeypatch.undo()

    from convscope.index import build

    def no_forward(*a, **k):
        raise AssertionError("an update of unchanged files ran the model")

    monkeypatch.setattr(build, "forward", no_forward)
    new = Index.build(model, None, tmp_path / "index", update=True, workers=0, progress=False)
    assert "place" in new.signals and np.array_equal(np.asarray(new.embedding), embedding)
    assert names(new.search("lyon")) == ["chelsea"]
    with sqlite3.connect(tmp_path / "index" / "index.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM thumbs").fetchone()[0] == 4
    new.close()


def test_untrue_metadata_is_ignored_and_counted(tmp_path, model):
    folder = tmp_path / "bad"
    folder.mkdir()
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[DATE_TIME_ORIGINAL] = "0000:00:00 00:00:00"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (IFDRational(0), IFDRational(0), IFDRational(0)),
                                  3: "E", 4: (IFDRational(0), IFDRational(0), IFDRational(0))})
    Image.fromarray(skimage.data.chelsea()).save(folder / "zero.jpg", exif=exif)
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[DATE_TIME_ORIGINAL] = "2999:01:01 00:00:00"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (IFDRational(95), IFDRational(0), IFDRational(0)),
                                  3: "E", 4: (IFDRational(4), IFDRational(0), IFDRational(0))})
    Image.fromarray(skimage.data.coffee()).save(folder / "future.jpg", exif=exif)
    index = Index.build(model, [folder], tmp_path / "index", workers=0, progress=False)
    notes = index.info()["notes"]
    assert notes.get("date") == 2 and notes.get("gps") == 2
    rows = index.query("SELECT city, lat, taken, taken_from FROM files")
    assert all(r["city"] is None and r["lat"] is None and r["taken"] is None and r["taken_from"] == "file" for r in rows)
    index.close()


# --------------------------------------------------------------------------- text in photos

from convscope import ocr  # noqa: E402
from tests.test_ocr import draw_words, photo_background  # noqa: E402

needs_engine = pytest.mark.skipif(ocr.available() is not None, reason=str(ocr.available()))


def write_signs(folder: Path) -> dict[str, tuple]:
    """A sign over a photo-like picture, a receipt, and a photo with no text; the signs' boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    sign = photo_background((800, 600), seed=1)
    boxes = draw_words(sign, [["BAKERY"], ["OPEN", "DAILY"]], (120, 160), 90, (250, 250, 250))
    sign.save(folder / "sign.jpg", quality=92)
    receipt = Image.new("RGB", (600, 800), "white")
    boxes.update(draw_words(receipt, [["GROCERIES"], ["MILK", "2.50"], ["TOTAL", "7.80"]], (60, 80), 48, (20, 20, 20)))
    receipt.save(folder / "receipt.png")
    Image.fromarray(skimage.data.chelsea()).save(folder / "cat.jpg")
    return boxes


@pytest.fixture(scope="module")
def signs(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("signs")
    boxes = write_signs(root / "photos")
    index = Index.build(model, [root / "photos"], root / "index", workers=0, progress=False, text=True)
    yield index, boxes, root
    index.close()


@needs_engine
def test_a_word_written_in_a_photo_finds_it_with_its_box(signs):
    index, boxes, _ = signs
    assert "text" in index.signals
    (hit,) = index.search("bakery")
    assert Path(hit.path).stem == "sign" and [w.kind for w in hit.why] == ["text"]
    why = hit.why[0]
    assert why.text.lower() == "bakery" and why.similarity == 1.0
    left, top, right, bottom = why.box
    want = boxes["BAKERY"]
    assert abs(left - want[0]) < 0.05 and abs(top - want[1]) < 0.05 and abs(right - want[2]) < 0.05
    assert hit.to_json()["why"][0]["kind"] == "text"


@needs_engine
def test_text_is_tolerant_of_recognition_errors_and_combines(signs):
    index, _, _ = signs
    assert names(index.search("grocerys")) == ["receipt"]  # one letter off
    assert names(index.search("total milk")) == ["receipt"]  # both written on it
    assert names(index.search('"open"')) == ["sign"]  # quoted: the text alone
    assert index.search("total bakery") == []  # not on the same photo
    cat = index.search("cat")
    assert names(cat)[:1] == ["cat"] and all(w.kind == "class" for w in cat[0].why)


@needs_engine
def test_an_unknown_word_is_looked_for_in_the_text_first(signs):
    index, _, _ = signs
    with pytest.raises(UnknownWordError, match="Close matches"):
        index.search("dgo")  # no vocabulary reads it and no photo has it written


@needs_engine
def test_an_update_adds_text_to_an_index_built_without_it(tmp_path, model, monkeypatch):
    write_signs(tmp_path / "photos")
    old = Index.build(model, [tmp_path / "photos"], tmp_path / "index", workers=0, progress=False, text=False)
    assert "text" not in old.signals and "texts" not in {r[0] for r in old.query("SELECT name FROM sqlite_master")}
    top_class = np.asarray(old.top_class).copy()
    old.close()
    from convscope.index import build

    monkeypatch.setattr(build, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("the model ran")))
    new = Index.build(model, None, tmp_path / "index", update=True, workers=0, progress=False, text=True)
    assert "text" in new.signals and np.array_equal(np.asarray(new.top_class), top_class)
    assert names(new.search("bakery")) == ["sign"]
    new.close()


def test_without_the_engine_a_text_build_says_what_to_install(tmp_path, model, monkeypatch):
    monkeypatch.setattr(ocr, "available", lambda: "no OCR engine: pip install 'convscope[text]'")
    from convscope.errors import ConvscopeError

    with pytest.raises(ConvscopeError, match="pip install"):
        Index.build(model, [tmp_path], tmp_path / "index", text=True)
    assert signals.choose({}) == tuple(s.name for s in signals.SIGNALS if s.name != "text")


# --------------------------------------------------------------------------- taught concepts


def test_a_taught_concept_is_a_word_that_hides_its_namesake(built, tmp_path):
    import shutil

    from convscope.index import concepts

    shutil.copytree(built.root, tmp_path / "index")
    with Index.open(tmp_path / "index") as index:
        concepts.teach(index, "Cat", [str(Path(built.files()[3]["path"]).with_name("coffee.jpg"))])
    with Index.open(tmp_path / "index") as index:
        hits = index.search("cat")
        assert names(hits)[:1] == ["coffee"] and hits[0].why[0].kind == "concept"
        record = hits[0].to_json()["why"][0]
        assert record["concept"] == "Cat" and record["nearest"][0].endswith("coffee.jpg")
        assert record["note"] == "your concept, not a WordNet word of the same spelling"
        assert names(index.search("cat sydney")) == ["coffee"] and index.search("cat lyon") == []
        assert sorted(names(index.search("cat, lyon"))) == ["chelsea", "coffee"]
        assert names(index.search("domestic cat"))[:1] == ["chelsea"]  # the other words are as they were


def test_a_live_photo_is_one_result(tmp_path, model):
    """An iPhone Live Photo (IMG_1.HEIC beside IMG_1.MOV; here a JPEG and an MP4 of the same
    name) is one moment: one result, which names both files."""
    import av

    folder = tmp_path / "live"
    folder.mkdir()
    cat = Image.fromarray(skimage.data.chelsea()).convert("RGB")
    cat.save(folder / "IMG_1.jpg")
    with av.open(str(folder / "IMG_1.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=2)
        stream.width, stream.height, stream.pix_fmt = 448, 300, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_image(cat.resize((448, 300)))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    index = Index.build(model, [folder], tmp_path / "index", workers=0, progress=False)
    hits = index.search("cat")
    assert len(hits) == 1 and hits[0].moment["kind"] == "live"
    assert sorted(Path(f).name for f in hits[0].to_json()["moment"]["files"]) == ["IMG_1.jpg", "IMG_1.mp4"]
    index.close()


def test_the_demo_serves_search_before_its_index_exists_then_the_index(built, tmp_path):
    """`convscope demo` serves while it builds: its search pages start on an empty index and
    take up the real one once it is built (`reopen_index`), without a restart."""
    from starlette.testclient import TestClient

    from convscope.web import create_app
    from convscope.web.app import reopen_index
    from convscope.web.demo import empty_index

    app = create_app(index=empty_index(tmp_path))
    with TestClient(app) as client:
        assert client.get("/api/search", params={"q": "cat"}).json()["count"] == 0
        reopen_index(app, built.root)
        found = client.get("/api/search", params={"q": "cat lyon"}).json()
        assert [Path(r["path"]).stem for r in found["results"]] == ["chelsea"]
        assert client.get("/places").status_code == 200 and client.get("/concepts").status_code == 200
