"""Everyday words (convscope/vocab/everyday.json): the table, its mappings and their whys, plurals,
phrases, unseen words, a user's own entries, and the generator that writes the table."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from convscope.errors import ArgumentError, ConvscopeError
from convscope.vocab import EverydayWords, Evidence, Vocabulary, unseen_note
from convscope.vocab import everyday, times

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "convscope" / "vocab" / "everyday.json"
SOURCES = {"reviewed", "wordnet:kind-of", "wordnet:part-of", "wordnet:member-of", "wordnet:domain",
           "wordnet:substance-of", "wordnet:derivation"}
LABELS = Vocabulary.load().labels


@pytest.fixture(scope="module")
def words() -> EverydayWords:
    return EverydayWords.load()


def test_table_loads_and_every_mapping_is_valid(words):
    doc = json.loads(TABLE.read_text(encoding="utf-8"))
    assert doc["generator"] == "python tools/make_everyday_table.py"
    assert doc["wordnet"].startswith("WordNet 3.0")
    assert len(doc["words"]) >= 200 and len(words.words) >= 800  # a few hundred words, more with their forms
    mapped = unseen = 0
    for word, entry in doc["words"].items():
        if entry.get("unseen"):
            assert entry["classes"] == {}, word
            unseen += 1
            continue
        assert entry["classes"], word
        mapped += 1
        for index, mapping in entry["classes"].items():
            assert 0 <= int(index) < 1000, (word, index)
            assert mapping["label"] == LABELS[int(index)], (word, index)
            assert mapping["reason"].strip(), (word, index)
            assert mapping["source"] in SOURCES, (word, mapping)
    assert mapped >= 100 and unseen >= 60
    # every source of evidence the issue names is used
    used = {m["source"] for e in doc["words"].values() for m in e["classes"].values()}
    assert {"reviewed", "wordnet:part-of", "wordnet:member-of", "wordnet:domain"} <= used


def test_known_mappings_and_their_reasons(words):
    beach = words.lookup("beach")
    assert beach.word == "beach" and not beach.unseen
    assert beach.reasons[978] == "a beach is part of a shore; a seashore is a kind of shore"  # seashore
    assert beach.sources[978] == "wordnet:part-of"
    assert beach.sources[977] == "reviewed" and "sandbar" in beach.reasons[977]  # sandbar
    assert {445, 842} <= beach.classes  # bikini, swimming trunks
    assert beach.why(978) == "beach: a beach is part of a shore; a seashore is a kind of shore (wordnet:part-of)"

    snow = words.lookup("snow")
    assert {970, 795, 537, 802, 803} <= snow.classes  # alp, ski, dogsled, snowmobile, snowplow
    assert snow.reasons[795] == "people ski on snow"

    people = words.lookup("people")
    for index in (981, 982, 983):  # ballplayer, groom, scuba diver: WordNet's persons
        assert people.sources[index] == "wordnet:member-of"
        assert people.reasons[index].startswith("a person is a member of people; ")
    assert people.reasons[834] == "a suit is worn by a person"
    assert 474 not in people.classes  # a cardigan: ImageNet's photos of it show no person

    assert words.lookup("wedding").reasons[982] == "a groom is a member of a wedding"
    assert words.lookup("sport").sources[416] == "wordnet:domain"  # balance beam, via gymnastics
    assert "couch" in words.lookup("living room").reasons[831]


@pytest.mark.parametrize("typed, word, index, reason", [
    ("police officers", "police", 734, "a police van carries the police"),  # police van
    ("Firemen", "firefighter", 555, "a fire engine carries firefighters"),
    ("soccer", "football", 805, "football (soccer) is played with a soccer ball"),
    ("golfers", "golf", 575, "golfers ride a golf cart"),
    ("ice hockey", "hockey", 746, "ice hockey is played with a puck"),
    ("gymnasts", "gymnastics", 416, "a gymnast performs on a balance beam"),
    ("cyclists", "cycling", 671, "a cyclist rides a mountain bike"),
    ("kayak", "kayaking", 472, "people paddle a canoe"),
    ("boat trips", "boating", 576, "a gondola is a boat people go out on"),
    ("cruise ships", "cruise", 628, "a cruise ship is an ocean liner"),  # liner
    ("theme parks", "amusement park", 476, "a carousel turns at a fair"),
    ("pagodas", "temple", 832, "a stupa is a Buddhist shrine; ImageNet's photos show temple stupas and pagodas"),
    ("place of worship", "religion", 406, "an altar is a place of worship"),
    ("ancient ruins", "ruins", 500, "cliff dwellings are ancient ruins"),
    ("building site", "construction site", 517, "a construction crane stands over a building site"),
    ("petrol station", "gas station", 571, "gas pumps stand at a gas station"),
    ("wild animals", "wildlife", 386, "an African elephant is a wild animal"),
    ("savannah", "safari", 340, "a zebra lives on the African savanna, where safaris go"),
    ("livestock", "farm animals", 345, "an ox is a farm animal"),
    ("marine life", "sea life", 148, "a killer whale lives in the sea"),
    ("antarctica", "arctic", 145, "a king penguin lives in the polar regions"),
    ("latte", "coffee", 550, "an espresso maker makes coffee"),
    ("teacups", "tea", 968, "tea is drunk from a cup; ImageNet's cups are teacups"),
    ("takeaway", "fast food", 963, "a pizza is fast food"),
    ("national flag", "flag", 557, "a flag flies from a flagpole"),
    ("campervans", "camper", 757, "a camper is a recreational vehicle"),
    ("classic cars", "vintage car", 661, "a Model T is a vintage car"),
    ("photos of hot air balloons", "hot air balloon", 417, "ImageNet's balloon is a large bag filled with gas or hot air"),
    ("beekeepers", "beekeeping", 410, "an apiary is where bees are kept"),
    ("knights", "medieval", 490, "a knight wore chain mail"),
    ("hairdresser", "haircut", 423, "a barber cuts hair in a barber chair"),
    ("crochet", "knitting", 911, "knitting is done with wool yarn"),
    ("movie theater", "movies", 498, "films are shown in a cinema"),
    ("OOTD", "fashion", 834, "a suit is a garment"),
    ("music", "music", 402, "an acoustic guitar is a musical instrument"),  # the article as the label sounds
])
def test_more_words_and_their_reasons(words, typed, word, index, reason):
    evidence = words.lookup(typed)
    assert evidence.word == word and not evidence.unseen
    assert evidence.reasons[index] == reason and evidence.sources[index] == "reviewed"


def test_birdwatching_is_the_birds_of_wordnet_but_farmyard_ones(words):
    birding = words.lookup("birding")
    assert birding.reasons[94] == "a hummingbird is a kind of bird" and birding.sources[94] == "wordnet:kind-of"
    assert len(birding.classes) == 57 and not {7, 8} & birding.classes  # no cock, no hen


def test_mappings_the_contact_sheets_dropped_stay_out(words):
    """What the dev photos' contact sheets showed to be weak (BENCHMARKS.md, "Everyday words") is not in the table."""
    assert words.entry("dessert") is None  # WordNet's dessert reading is enough; chocolate sauce was melted chocolate
    assert 572 not in words.lookup("wine").classes  # goblet: ImageNet's goblets are not all wine glasses
    assert 309 not in words.lookup("beekeeping").classes  # a bee on a flower is no beekeeping
    assert words.unseen("prom") and words.unseen("seafood")  # a gown is no prom; a live crab is no dish
    assert words.entry("fauna") is None and words.entry("construction work") is None  # WordNet reads them wrongly


def test_time_words_are_left_to_the_time_grammar(words):
    """The query grammar reads "night", "summer", "may" as times first: the table holds such a word
    only where its classes are evidence (snow for winter)."""
    for word, entry in words.entries.items():
        for form in (word, *entry.forms):
            if times.parse(form.split(), 0) is not None:
                assert form == "winter" and entry.reasons, form
    assert {795, 537, 802} <= words.lookup("winter").classes  # ski, dogsled, snowmobile
    for word in ("night", "nighttime", "summer", "autumn", "fall", "spring", "morning", "evening", "may"):
        assert words.entry(word) is None, word
    assert words.unseen("stars") and words.unseen("starry sky")


def test_no_form_holds_a_word_the_query_grammar_splits_on(words):
    """Commas, "or" and "and" separate alternatives in a query: a form holding one is never read."""
    for word, entry in words.entries.items():
        for form in (word, *entry.forms):
            assert not {"and", "or", ","} & set(form.split()), form


@pytest.mark.parametrize("word", ["surfing", "hiking", "picnic", "monochrome", "selfies", "waterfalls",
                                  "forests", "receipts", "skyline", "fireworks", "tattoos", "ice skating"])
def test_more_unseen_words_give_the_teach_note(words, word):
    evidence = words.lookup(word)
    assert evidence.unseen and evidence.reasons == {}
    assert evidence.note == f"the network has no class for {word!r}; teach it from examples (`convscope teach`)"
    assert words.entry(word).unseen.strip()  # each says why


def test_plurals_case_forms_and_phrases(words):
    assert words.lookup("Beaches").word == "beach"
    assert words.lookup("KIDS").word == words.lookup("children").word == "child"
    assert words.lookup("women").word == "woman" and words.lookup("men").word == "man"
    assert words.lookup("Living-Rooms").word == "living room"
    assert words.lookup("pictures of food").word == "food"
    assert words.lookup("photos of my beach") is None  # one lead, then the word
    assert words.lookup("seaside").word == "beach"
    ev = words.lookup("birthday parties")
    assert ev.unseen and ev.phrase == "birthday parties" and ev.classes == frozenset()
    assert words.lookup("new year").unseen
    assert words.lookup("dog") is None and words.lookup("") is None
    assert words.longest >= 3 and "new year's eve" in words.words
    assert words.match(["my", "living", "room", "photos"], 1)[0].word == "living room"
    assert words.match(["my", "living", "room", "photos"], 1)[1] == 3
    assert words.match(["zzz"], 0) is None


def test_scores_sum_the_mapped_probabilities(words):
    probs = [0.0] * 1000
    probs[978], probs[977], probs[1] = 0.5, 0.25, 0.2
    assert words.lookup("beach").score(probs) == pytest.approx(0.75)


def test_unseen_words_say_so_in_one_line(words):
    assert words.unseen("sunset") and words.unseen("Sky") and words.unseen("Christmas trees")
    assert not words.unseen("beach") and not words.unseen("zzz")
    note = "the network has no class for 'sunset'; teach it from examples (`convscope teach`)"
    assert words.note("Sunset") == note == unseen_note("sunset") == words.lookup("sunset").note
    assert "\n" not in note
    assert isinstance(words.lookup("sunsets"), Evidence) and words.lookup("sunsets").reasons == {}


def _write(tmp_path, doc, name="mine.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_a_users_file_adds_and_overrides_entries(tmp_path, words):
    path = _write(tmp_path, {"words": {
        "picnic": {"forms": ["picnics in the park"], "classes": {"588": {"reason": "a hamper holds a picnic"}}},
        "Sunset": {"classes": {"978": {"label": "seashore", "reason": "our sunsets are at the sea"}}},
        "beach": {"classes": {"977": {"reason": "our beach has a sandbar", "source": "mine"}}},
        "cafe": {"forms": ["seaside"], "classes": {"967": {"reason": "espresso at the cafe"}}},
        "graffiti": {"unseen": "no class is a painted wall"},
    }})
    mine = EverydayWords.load(path)
    picnic = mine.lookup("picnics")
    assert picnic.reasons == {588: "a hamper holds a picnic"} and picnic.sources == {588: "user"}
    assert mine.lookup("Picnics in the park").word == "picnic"
    sunset = mine.lookup("sunset")
    assert not sunset.unseen and sunset.reasons == {978: "our sunsets are at the sea"}
    assert not mine.unseen("sunset") and mine.unseen("sundown") is False  # its old forms went with it
    assert mine.lookup("beaches").reasons == {977: "our beach has a sandbar"}
    assert mine.lookup("beaches").sources == {977: "mine"}
    assert mine.lookup("seaside").word == "cafe"  # the user's form wins over the table's
    assert mine.unseen("graffiti")
    # the shipped table is unchanged
    assert EverydayWords.load().lookup("beach").reasons[978].startswith("a beach is part of")
    assert EverydayWords.load().unseen("sunset")


@pytest.mark.parametrize("content, what", [
    ("{not json", "not JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
    ([1, 2], 'it holds no "words" object'),
    ({"words": {"x": {"classes": {"1000": {"reason": "r"}}}}}, "word 'x': class '1000' is not a class index 0..999"),
    ({"words": {"x": {"classes": {"-1": {"reason": "r"}}}}}, "word 'x': class '-1' is not a class index"),
    ({"words": {"x": {"classes": {"978": {"reason": " "}}}}}, "word 'x': class 978 (seashore) has no \"reason\""),
    ({"words": {"x": {"classes": {"978": "seashore"}}}}, "word 'x': class 978 (seashore) has no \"reason\""),
    ({"words": {"x": {"classes": {"978": {"reason": "r", "label": "alp"}}}}}, "class 978 is 'seashore', not 'alp'"),
    ({"words": {"x": {}}}, "word 'x': it has no classes; give some, or mark it \"unseen\" with why"),
    ({"words": {"x": {"unseen": "why", "classes": {"978": {"reason": "r"}}}}}, "it is \"unseen\" but has classes"),
    ({"words": {"x": {"forms": "xs", "unseen": "why"}}}, "word 'x': \"forms\" is not a list of words"),
    ({"words": {"x": []}}, "word 'x': its entry is not an object"),
])
def test_a_bad_users_file_is_a_one_line_error(tmp_path, content, what):
    path = _write(tmp_path, content)
    with pytest.raises(ArgumentError) as err:
        EverydayWords.load(path)
    message = str(err.value)
    assert message.startswith(f"everyday words file {str(path)!r}: ") and what in message
    assert "\n" not in message and err.value.param == "extra"


def test_an_unreadable_users_file_is_a_one_line_error(tmp_path):
    for path in (tmp_path / "missing.json", tmp_path):  # no such file; a folder
        with pytest.raises(ConvscopeError, match=r"^everyday words file .*: cannot be read \(") as err:
            EverydayWords.load(path)
        assert "\n" not in str(err.value)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ArgumentError, match="cannot be read"):
        EverydayWords.load(binary)


def test_loading_is_pure_and_cached():
    assert EverydayWords.load() is EverydayWords.load()
    assert "torch" not in everyday.__dict__ and "sqlite3" not in everyday.__dict__


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(),
                    reason="needs Debian's wordnet-base (/usr/share/wordnet) to run the generator")
def test_the_committed_table_is_the_generators_output():
    spec = importlib.util.spec_from_file_location("make_everyday_table", ROOT / "tools" / "make_everyday_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        first = module.dump(module.build())
        assert module.dump(module.build()) == first  # deterministic
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert first == TABLE.read_text(encoding="utf-8"), "run `python tools/make_everyday_table.py`"


def test_no_unseen_word_is_one_the_wordnet_vocabulary_reads(words):
    """An unseen word's note says the network has no class for it: true only where WordNet's
    words for the classes do not read it either ("spring" is a coil, "home" a dwelling)."""
    vocab = Vocabulary.load()
    for word, entry in words.entries.items():
        if entry.unseen is not None:
            for form in (word, *entry.forms):
                with pytest.raises(ConvscopeError):
                    vocab.classes_for(form)
