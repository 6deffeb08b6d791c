"""Unit names (convscope.atlas.names): the rule on hand-made labels, the names of a real atlas
checked against a plain count written here, the classes of its example images against
`convscope classify`, the CLI, and the names on the gallery's layer and unit pages in Chromium."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convscope.atlas import Atlas, build
from convscope.atlas.names import (CONCEPT, chance, name_atlas, name_unit, name_units, needed,
                                   synset_labels)
from convscope.vocab import Vocabulary

from .test_web import tiny_model

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"


def cli(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "convscope", *args], capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


# --------------------------------------------------------------------------- the rule


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.load()


@pytest.fixture(scope="module")
def wordnet(vocab):
    """(ancestors per class, classes under each synset)."""
    ancestors = [vocab.ancestors(c) for c in range(1000)]
    size: dict[str, int] = {}
    for up in ancestors:
        for w in up:
            size[w] = size.get(w, 0) + 1
    return ancestors, size


def wnid(vocab, word):
    senses = vocab.classes_for(word).senses
    return senses[0]


def test_binomial_chance_equals_scipy():
    stats = pytest.importorskip("scipy.stats")
    for count, total, base in [(7, 9, 0.12), (5, 9, 0.4), (9, 9, 0.396), (1, 9, 0.0), (3, 4, 0.5)]:
        assert chance(count, total, base) == pytest.approx(stats.binom.sf(count - 1, total, base), rel=1e-9, abs=1e-15)


def test_needed_share():
    assert [needed(9, True), needed(9, False), needed(4, True), needed(4, False), needed(3, False)] == [5, 6, 3, 3, 2]


def test_dogs_of_different_breeds_are_dog_and_one_breed_is_the_breed(vocab, wordnet):
    ancestors, size = wordnet
    labels = vocab.labels
    breeds = [labels.index(n) for n in ("golden retriever", "beagle", "pug", "Siberian husky", "collie",
                                        "Chihuahua", "boxer")]
    others = [labels.index("airliner"), labels.index("goldfish")]  # (a cat would make 8 of 9 domestic animals)
    pool = list(range(1000))  # base rates: one image per class, as the dev photos are
    per_image = {c: synset_labels([(c, 0.9)], vocab, ancestors) for c in pool}
    base: dict[str, float] = {}
    for keys in per_image.values():
        for k in keys:
            base[k] = base.get(k, 0) + 1 / len(pool)
    dogs = name_unit([per_image[c] for c in breeds + others], base, size, need=5)
    assert dogs.named and dogs.key == wnid(vocab, "dog") and (dogs.count, dogs.total) == (7, 9)
    retriever = labels.index("golden retriever")
    one_breed = name_unit([per_image[retriever]] * 6 + [per_image[c] for c in (breeds[1], *others)], base, size, need=5)
    assert one_breed.named and one_breed.key == vocab.class_wnids[retriever] and one_breed.count == 6
    # nothing shared by a majority: no name, and the closest says what it nearly is
    mixed = name_unit([per_image[c] for c in breeds[:4] + [labels.index(n) for n in
                                                           ("goldfish", "airliner", "banana", "volcano", "mosque")]],
                      base, size, need=5)
    assert not mixed.named and mixed.count == 4 and mixed.key == wnid(vocab, "dog")


def test_a_broad_class_at_its_base_rate_names_nothing(vocab, wordnet):
    ancestors, size = wordnet
    animal = wnid(vocab, "animal")
    animals = [c for c in range(1000) if animal in ancestors[c]]
    base = {animal: len(animals) / 1000}
    # 5 of 9 animals is the base rate (40%): a majority, but likely by luck
    result = name_unit([{animal}] * 5 + [set()] * 4, base, size, need=5)
    assert not result.named and result.chance > 0.1
    assert result.chance == pytest.approx(chance(5, 9, len(animals) / 1000))


def test_unclassified_examples_count_against_the_share():
    result = name_unit([{"red"}] * 5 + [set()] * 4, {"red": 0.1}, {}, need=5)
    assert result.named and (result.count, result.total) == (5, 9)
    assert not name_unit([{"red"}] * 4 + [set()] * 5, {"red": 0.1}, {}, need=5).named


def test_confident_mass_reads_an_unsure_photo_as_its_kind(vocab, wordnet):
    ancestors, _ = wordnet
    labels = vocab.labels
    top = [(labels.index("golden retriever"), 0.3), (labels.index("Labrador retriever"), 0.25), (1, 0.1)]
    keys = synset_labels(top, vocab, ancestors)
    assert wnid(vocab, "retriever") in keys and wnid(vocab, "dog") in keys
    assert vocab.class_wnids[labels.index("golden retriever")] not in keys  # 0.3: not confident


# --------------------------------------------------------------------------- a real atlas, planted labels


def write_photos(folder: Path) -> dict[str, str]:
    """Eight photos, four reddish and four bluish, of random texture; their planted labels."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    groups = {}
    for i in range(8):
        colour = "red" if i < 4 else "blue"
        arr = rng.integers(0, 90, (72, 80, 3), dtype=np.uint8)
        arr[..., 0 if colour == "red" else 2] += 150
        path = folder / f"{colour}{i}.png"
        Image.fromarray(arr).save(path)
        groups[str(path.resolve())] = colour
    return groups


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    groups = write_photos(root / "photos")
    atlas = build(tiny_model(), [str(root / "photos")], root / "atlas", layers=["features.1", "features"], top=4,
                  project=0, progress=False)
    atlas.close()
    return root / "atlas", groups


def plant_names(directory, groups):
    """Name the units from the photos' planted colours through the rule's source-free entry."""
    with Atlas.open(directory) as a:
        labels = {i["image_id"]: {groups[i["path"]]} for i in a.images()}
        names = name_units(a, labels, {"red": 1, "blue": 1}, str, CONCEPT)
        a.set_names({}, names, {**a.naming(), "available": True, "planted": True})
    return names


def test_tiny_model_is_not_named_by_wordnet_and_says_why(planted):
    directory, _ = planted
    with Atlas.open(directory) as a:
        record = a.naming()
        assert record["available"] is False and "not ImageNet's 1,000" in record["reason"]
        assert a.unit_names() == []
    result = cli("atlas", "units", str(directory), check=False)
    assert result.returncode != 0 and result.stderr.count("\n") == 1 and "not ImageNet's 1,000" in result.stderr


def test_names_from_planted_labels_equal_a_plain_count(planted, tmp_path):
    stats = pytest.importorskip("scipy.stats")
    directory, groups = planted
    names = plant_names(directory, groups)
    with Atlas.open(directory) as a:
        images = {i["image_id"]: groups[i["path"]] for i in a.images()}
        input_size = a.info()["preprocessing"]["input_size"]
        assert [(n["layer"], n["unit"]) for n in a.unit_names()] == [(n["layer"], n["unit"]) for n in names]
        assert a.unit_names() == names
        for n in names:
            colours = [images[e["image_id"]] for e in a.examples(n["layer"], n["unit"])]
            field = a.layer(n["layer"])["receptive_field"]
            whole = field[0] >= input_size[0] and field[1] >= input_size[1]
            need = len(colours) // 2 + 1 if whole else max(len(colours) // 2 + 1, math.ceil(2 * len(colours) / 3))
            rates = {c: sum(1 for v in images.values() if v == c) / len(images) for c in ("red", "blue")}
            odds = {c: stats.binom.sf(colours.count(c) - 1, len(colours), rates[c]) for c in rates
                    if colours.count(c) >= 2}
            assert n["total"] == len(colours) == 4
            if not odds:
                assert n["key"] is None and not n["named"]
                continue
            best = min(odds, key=lambda c: (odds[c], c))
            count, base, luck = colours.count(best), rates[best], odds[best]
            assert n["key"] == best
            assert n["count"] == count and n["base"] == pytest.approx(base)
            assert n["chance"] == pytest.approx(luck)
            assert n["named"] == (count >= need and luck <= 1e-3)
    # four of four at a base rate of one half: 1 in 16 by luck, so nothing is named; the page says the closest
    assert not any(n["named"] for n in names)


def test_cli_units_lists_names_and_old_atlases_say_how_to_name(planted, tmp_path):
    directory, groups = planted
    plant_names(directory, groups)
    rows = [json.loads(line) for line in cli("atlas", "units", str(directory), "--all", "--json").stdout.splitlines()]
    with Atlas.open(directory) as a:
        assert rows == [n for n in a.unit_names()]
    # an atlas from before names: one line saying what to run
    import sqlite3

    old = tmp_path / "old"
    import shutil

    shutil.copytree(directory, old)
    with sqlite3.connect(old / "atlas.sqlite") as conn:
        conn.execute("DROP TABLE unit_names")
        conn.execute("DROP TABLE image_classes")
        conn.execute("DELETE FROM meta WHERE key = 'names'")
    result = cli("atlas", "units", str(old), check=False)
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert f"convscope atlas name {old}" in result.stderr
    with Atlas.open(old) as a:
        assert a.naming() is None and a.unit_names() == [] and a.image_classes() == {}
    bad = cli("atlas", "units", str(directory), "--layer", "features.9", check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "features.1" in bad.stderr


# --------------------------------------------------------------------------- the pretrained model


def test_example_classes_are_the_classifiers_and_word_search(default_model, sample_dir, tmp_path):
    from convscope.atlas.names import word_units
    from convscope.classify import classify

    directory = tmp_path / "atlas"
    atlas = build(default_model, [str(sample_dir)], directory, layers=["blocks"], top=3, project=0, progress=False,
                  names=False)
    assert atlas.naming() is None and atlas.unit_names() == []
    named = cli("atlas", "name", str(directory))  # the atlas's own model, loaded from what it records
    assert named.stdout.startswith("blocks: ") and "units named" in named.stdout
    record = atlas.naming()
    assert record["available"] and record["classified"] == len(atlas.images())
    classes = atlas.image_classes()
    expected = {str(Path(c.path).resolve()): c.predictions for c in classify(default_model, [str(sample_dir)], top=3)}
    for image in atlas.images():
        mine = classes[image["image_id"]]
        theirs = expected[image["path"]]
        assert [c for c, _ in mine[:3]] == [p.index for p in theirs]
        assert [p for _, p in mine[:3]] == pytest.approx([p.probability for p in theirs], abs=1e-4)
    names = atlas.unit_names("blocks")
    assert len(names) == atlas.layer("blocks")["units"]
    # the word search agrees with the stored classes, counted here
    vocab = Vocabulary.load()
    cats = set(vocab.classes_for("cat").classes)
    found = word_units(atlas, "cat", "blocks")
    for r in found:
        ids = [e["image_id"] for e in atlas.examples("blocks", r["unit"])]
        count = sum(1 for i in ids if sum(p for c, p in classes[i] if c in cats) >= 0.5)
        assert r["count"] == count and count >= needed(len(ids), True)
    listed = [json.loads(line) for line in cli("atlas", "units", str(directory), "--word", "cat", "--json").stdout.splitlines()]
    assert listed == json.loads(json.dumps(found))
    unknown = cli("atlas", "units", str(directory), "--word", "dgo", check=False)
    assert unknown.returncode != 0 and unknown.stderr.count("\n") == 1 and "dog" in unknown.stderr
    again = name_atlas(atlas, default_model)  # naming again replaces, and gives the same names
    assert again["classified"] == record["classified"] and atlas.unit_names("blocks") == names
    atlas.close()


# --------------------------------------------------------------------------- the gallery in Chromium


@pytest.mark.browser
def test_unit_names_in_chromium(planted, tmp_path):
    pytest.importorskip("playwright.sync_api")
    from tests.served import CHROMIUM, chromium, serving

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from convscope.web import create_app

    directory, groups = planted
    with Atlas.open(directory) as a:  # a name for every unit that its planted colour fills 3 of 4
        labels = {i["image_id"]: {groups[i["path"]]} for i in a.images()}
        names = name_units(a, labels, {"red": 1, "blue": 1}, str, CONCEPT)
        for n in names:  # the pages show what the atlas holds: every other unit named (the rule is tested above)
            n["named"] = n["key"] is not None and n["unit"] % 2 == 0
        a.set_names({}, names, {"available": True, "planted": True})
    named = [n for n in names if n["named"]]
    unnamed = [n for n in names if not n["named"]]
    assert named and unnamed
    ARTIFACTS.mkdir(exist_ok=True)
    with serving(create_app(directory, fill=False)) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        first = named[0]
        layer = first["layer"]
        page.goto(f"{base}/layers/{layer}")
        tiles = page.locator("#units .tile")
        shown = {}
        for i in range(tiles.count()):
            tile = tiles.nth(i)
            unit = int(tile.locator(".label").inner_text())
            tag = tile.locator(".name")
            shown[unit] = tag.inner_text() if tag.count() else None
        expected = {n["unit"]: f"{n['name']} {n['count']}/{n['total']}" if n["named"] else None
                    for n in names if n["layer"] == layer}
        assert shown == expected
        box = tiles.nth(first["unit"]).locator(".name").bounding_box()
        assert box and box["width"] > 10 and box["height"] > 5  # visible, not clipped away
        count_line = page.locator("#unit-names").inner_text()
        assert count_line.startswith(f"{sum(1 for n in named if n['layer'] == layer)} of ")
        page.screenshot(path=str(ARTIFACTS / "unit-names-layer.png"))
        page.goto(f"{base}/layers/{layer}/units/{first['unit']}")
        text = page.locator("#unit-name").inner_text()
        assert text.startswith(f"{first['name']}: {first['count']} of {first['total']} top images are one")
        page.screenshot(path=str(ARTIFACTS / "unit-names-unit.png"))
        other = unnamed[0]
        page.goto(f"{base}/layers/{other['layer']}/units/{other['unit']}")
        text = page.locator("#unit-name").inner_text()
        assert text.startswith("unnamed")
        if other["name"]:
            assert f"closest: {other['name']}, {other['count']} of {other['total']}" in text
