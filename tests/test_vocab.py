"""The WordNet vocabulary: real counts from the shipped table, cross-checked by a plain walk of
its parent links written here; plurals, multiword lemmas, how words combine, unknown words,
albums. Pure Python: nothing here needs torch or /usr/share/wordnet."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from convscope.errors import UnknownNameError
from convscope.vocab import ALBUMS, NoClassError, Vocabulary, album_for
from convscope.vocab.albums import coverage

ROOT = Path(__file__).resolve().parents[1]
DOG, BIRD, VEHICLE, FISH, SNAKE = "n02084071", "n01503061", "n04524313", "n02512053", "n01726692"


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.load()


@pytest.fixture(scope="module")
def table() -> dict:
    return json.loads(resources.files("convscope.vocab").joinpath("wordnet_imagenet.json").read_text("utf-8"))


def classes_below(table: dict, wnid: str) -> set[int]:
    """The independent count: walk the parent links down from ``wnid``, by hand."""
    children: dict[str, list[str]] = {}
    for child, entry in table["synsets"].items():
        for parent in entry["parents"]:
            children.setdefault(parent, []).append(child)
    found, todo, seen = set(), [wnid], set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if "class" in table["synsets"][node]:
            found.add(table["synsets"][node]["class"])
        todo.extend(children.get(node, []))
    return found


@pytest.mark.parametrize("word, wnid, count", [
    ("dog", DOG, 118), ("bird", BIRD, 59), ("vehicle", VEHICLE, 67), ("fish", FISH, 16),
    ("snake", SNAKE, 17), ("fruit", "n13134947", 16), ("musical instrument", "n03800933", 26),
])
def test_counts_of_classes_under_a_word(vocab, table, word, wnid, count):
    match = vocab.classes_for(word)
    assert match.senses == (wnid,)  # the one sense of the word that the table holds
    assert len(match.classes) == count
    assert match.classes == classes_below(table, wnid)


def test_every_noun_sense_counts(vocab, table):
    # "instrument" is a musical instrument and also a device (a syringe, a compass)
    match = vocab.classes_for("instrument")
    assert match.senses == ("n03574816", "n03800933")
    assert len(match.classes) == 54
    assert match.classes == classes_below(table, "n03574816") | classes_below(table, "n03800933")
    # "cat": house cats and big cats
    assert {281, 291} <= vocab.classes_for("cat").classes  # tabby, lion


def test_the_1000_classes_and_their_labels(vocab, table):
    assert sum("class" in e for e in table["synsets"].values()) == 1000
    assert len(vocab.labels) == 1000
    assert (vocab.labels[0], vocab.labels[207], vocab.labels[817]) == ("tench", "golden retriever", "sports car")
    assert vocab.class_wnids[207] == "n02099601"


def test_labels_are_the_ones_convscope_shows(vocab):
    from convscope.models import imagenet_labels

    assert vocab.labels == imagenet_labels()


@pytest.mark.parametrize("query", ["dogs", "Dogs", "DOG", " dog "])
def test_plural_and_case(vocab, query):
    assert vocab.classes_for(query).paths == vocab.classes_for("dog").paths


def test_irregular_plurals(vocab):
    mice = vocab.classes_for("mice")
    assert mice.lemmas == ("mouse",)
    assert mice.classes == {673}  # the computer mouse: no ImageNet class is a mouse, the animal
    assert "n02330245" not in vocab.synsets  # WordNet's mouse (animal) is above no class
    assert vocab.classes_for("geese").classes == {99}
    assert vocab.base_forms("knives") == ["knife"]
    assert vocab.base_forms("wolves") == ["wolf"]


@pytest.mark.parametrize("plural, base", [
    ("buses", "bus"), ("boxes", "box"), ("churches", "church"), ("dishes", "dish"),
    ("strawberries", "strawberry"), ("golden retrievers", "golden retriever"),
])
def test_suffix_rules(vocab, plural, base):
    assert vocab.base_forms(plural) == [base]


def test_a_lemma_that_is_also_a_plural_means_both(vocab):
    assert vocab.base_forms("glasses") == ["glasses", "glass"]


@pytest.mark.parametrize("query", ["sports car", "Sports Cars", "sports_car"])
def test_multiword_lemma(vocab, query):
    assert vocab.classes_for(query).paths == {817: ("sports car",)}


@pytest.mark.parametrize("query", ["hot dog", "hot-dog", "Hot_Dogs"])
def test_hot_dog_is_one_lemma_not_a_dog(vocab, query):
    match = vocab.classes_for(query)
    assert match.classes == {934}
    assert match.lemmas == ("hot dog",)


def test_a_lemma_that_holds_and(vocab):
    assert vocab.classes_for("black-and-tan coonhounds").classes == {165}


def test_golden_retriever_path(vocab):
    expected = ("golden retriever", "retriever", "sporting dog", "hunting dog", "dog")
    assert vocab.classes_for("dog").paths[207] == expected
    assert vocab.classes_for("Golden Retriever").paths == {207: ("golden retriever",)}
    assert vocab.path(207, [DOG]) == expected


def test_the_shortest_path_wins(vocab):
    # a dog is both a canine and a domestic animal: the path to "animal" goes the shorter way
    path = vocab.classes_for("animal").paths[207]
    assert path == ("golden retriever", "retriever", "sporting dog", "hunting dog", "dog",
                    "domestic animal", "animal")


@pytest.mark.parametrize("query", ["dog, cat", "dogs or cats", "dogs and cats", "dog,cat,"])
def test_alternatives_are_a_union(vocab, query):
    match = vocab.classes_for(query)
    assert match.classes == vocab.classes_for("dog").classes | vocab.classes_for("cat").classes
    assert match.lemmas == ("dog", "cat")


def test_words_side_by_side_narrow(vocab):
    match = vocab.classes_for("retriever dog")
    assert match.classes == vocab.classes_for("retriever").classes
    assert len(match.classes) == 5
    # the path runs through the narrow word up to the broad one
    assert match.paths[207] == ("golden retriever", "retriever", "sporting dog", "hunting dog", "dog")
    assert vocab.classes_for("golden retriever dog").classes == {207}


def test_words_that_name_no_class_together(vocab):
    with pytest.raises(NoClassError, match="'dog, cat'"):
        vocab.classes_for("dog cat")


@pytest.mark.parametrize("query, name, close", [
    ("dgo", "dgo", "dog"), ("sports cra", "sports cra", "sports car"), ("red car", "red", None),
    ("puppies or dogs", "puppies", None),
])
def test_unknown_word(vocab, query, name, close):
    with pytest.raises(UnknownNameError) as info:
        vocab.classes_for(query)
    message = str(info.value)
    assert message.startswith(f"unknown word {name!r}.")
    assert "\n" not in message
    if close:
        assert close in message.split("Close matches: ")[1].split(".")[0].split(", ")


def test_an_empty_query(vocab):
    with pytest.raises(ValueError, match="holds no word"):
        vocab.classes_for(" , or ")


def test_score_is_the_sum_over_the_matched_classes(vocab):
    probabilities = [0.0] * 1000
    probabilities[207], probabilities[281], probabilities[817] = 0.5, 0.25, 0.125
    assert vocab.classes_for("dog").score(probabilities) == 0.5
    assert vocab.classes_for("dog, cat, car").score(probabilities) == 0.875


def test_the_licence_and_the_provenance_ship_with_the_table(vocab, table):
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in vocab.licence
    assert "Permission to use, copy, modify and distribute" in vocab.licence
    assert vocab.wordnet.startswith("WordNet 3.0")
    assert table["generator"] == "python tools/make_wordnet_table.py"


def test_the_table_is_small():
    path = ROOT / "convscope" / "vocab" / "wordnet_imagenet.json"
    assert path.stat().st_size < 300_000


def test_no_torch_and_no_system_wordnet_at_run_time():
    # Load the vocab modules without convscope/__init__ (which imports torch), and fail on any
    # file opened under /usr/share/wordnet.
    code = f"""
import sys, types
def guard(event, args):
    if event == "open" and str(args[0]).startswith("/usr/share/wordnet"):
        raise RuntimeError("opened " + str(args[0]))
sys.addaudithook(guard)
pkg = types.ModuleType("convscope"); pkg.__path__ = [{str(ROOT / "convscope")!r}]
sys.modules["convscope"] = pkg
from convscope.vocab import Vocabulary, album_for
assert len(Vocabulary.load().classes_for("dogs").classes) == 118
assert album_for(207) == "animals > dogs"
assert "torch" not in sys.modules and "numpy" not in sys.modules, "vocab imported torch or numpy"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_albums(vocab):
    assert album_for(207) == "animals > dogs"
    assert album_for(817) == "vehicles > cars"  # sports car
    assert album_for(281) == "animals > cats"
    assert album_for(291) == "animals > cats"  # lion
    assert album_for(948) == "food > fruit and vegetables"  # Granny Smith
    assert album_for(934) == "food"  # hotdog
    assert album_for(vocab.labels.index("padlock")) == "things > devices"
    assert album_for(vocab.labels.index("umbrella")) is None


def test_album_coverage(vocab):
    counts = coverage()
    assert len(ALBUMS) == len(counts) == 24
    assert sum(counts.values()) == 852
    assert counts["animals > dogs"] == 118
    assert all(n > 0 for n in counts.values())  # no album is empty
    # first match wins: a class goes to the first album whose words hold it (a plain loop here)
    for c in range(len(vocab.labels)):
        holding = [name for name, words in ALBUMS if c in vocab.classes_for(words).paths]
        assert album_for(c) == (holding[0] if holding else None), vocab.labels[c]
