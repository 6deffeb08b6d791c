"""Hostile and careless input to `index`, `search`, `duplicates` and `organize`, through the real
command line (click's runner on ``convscope.cli.main``) and the real server (uvicorn on loopback):
a query too long to read is one line (CLI exit 2, HTTP 400, no traceback anywhere); input errors
are the library's typed errors with the README's exit status; an empty index says so; and every
hint these commands print names a command that works, which each test runs.

The index is a random-initialized ResNet-18's, of three scikit-image photos (fast on a CPU).
"""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import convscope.cli.search as cli_search
from convscope.cli import main
from convscope.cli._common import describe_error
from convscope.errors import ArgumentError, UnknownWordError
from convscope.index import Index, search
from convscope.vocab import Vocabulary, wordnet

RESNET = ["--model", "torchvision:resnet18", "--no-pretrained", "--device", "cpu"]
BUILD = ["--layers", "layer4", "--workers", 0, "--batch-size", 8, *RESNET]
LONG = " ".join(["zzqx"] * 500)  # the probe's query: 500 unknown words, 2.5 KB


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(res) -> str:
    """The single line a failed command printed (no traceback, no second line)."""
    assert res.output.count("\n") == 1 and "Traceback" not in res.output, res.output
    return res.output.rstrip("\n")


def hinted(res) -> list[str]:
    """The command line (as argv after ``convscope``) that a message names in backticks."""
    commands = re.findall(r"`(convscope [^`]+)`", res.output)
    assert len(commands) == 1, res.output
    return shlex.split(commands[0])[1:]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sample_dir) -> Path:
    """``mix/``: three sample photos and ``bad.jpg`` (not an image, first in name order);
    ``junk/``: ``bad.jpg`` alone."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "mix").mkdir()
    (root / "junk").mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        shutil.copy(sample_dir / f"{name}.png", root / "mix" / f"{name}.png")
    for folder in ("mix", "junk"):
        (root / folder / "bad.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def index(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "index"
    res = run("index", photos / "mix", "--out", out, *BUILD)
    assert res.exit_code == 0, res.output
    return out


def interrupted(monkeypatch, *args):
    """``convscope index ARGS`` stopped by Ctrl-C as it reports its first skipped file."""

    def stop(path, reason):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(cli_search, "report_skipped", stop)
        res = run("index", *args)
    assert res.exit_code == 130 and res.output == "interrupted\n", res.output


# --------------------------------------------------------------------------- 5: a long query


def test_a_query_of_500_unknown_words_is_one_line_and_exit_2(index):
    res = run("search", index, LONG)
    assert res.exit_code == 2
    assert one_line(res) == "error: the query is 2,499 characters long; a search takes at most 256 (and 32 words)"
    many = run("search", index, " ".join(["dog"] * 40))  # short words, too many of them
    assert many.exit_code == 2 and one_line(many) == "error: the query holds 40 words; a search takes at most 32"
    within = run("search", index, " ".join(["zzqx"] * 30))  # within the bounds: the first unknown word
    assert within.exit_code == 1 and one_line(within).startswith("error: unknown word 'zzqx'. ")


def test_the_parser_reads_without_recursion(monkeypatch):
    """Past the bounds too (raised here), an unknown word among thousands is one error, found in
    one pass: no RecursionError, whatever the number of words."""
    monkeypatch.setattr(wordnet, "MAX_QUERY_WORDS", 10 ** 6)
    monkeypatch.setattr(wordnet, "MAX_QUERY_CHARS", 10 ** 7)
    vocab = Vocabulary.load()
    with pytest.raises(UnknownWordError, match=r"^unknown word 'zzqx'\.") as err:
        vocab.classes_for(" ".join(["zzqx"] * 5000))
    assert "\n" not in str(err.value)
    assert vocab.classes_for(", ".join(["dog"] * 3000)).classes == vocab.classes_for("dog").classes
    with pytest.raises(UnknownWordError, match=r"^unknown word 'sports cra'\. Close matches: sports car"):
        vocab.classes_for("sports cra")  # a misspelled phrase is still named whole


def test_the_server_answers_a_long_query_400_without_a_traceback(index, capfd):
    import httpx

    from convscope.web import create_app
    from tests.served import serving

    with serving(create_app(index=index)) as base:
        page = httpx.get(base + "/search", params={"q": LONG}, timeout=30)
        api = httpx.get(base + "/api/search", params={"q": LONG}, timeout=30)
        words = httpx.get(base + "/api/search", params={"q": " ".join(["dog"] * 40)}, timeout=30)
        ok = httpx.get(base + "/api/search", params={"q": "dog"}, timeout=30)
    reason = "the query is 2,499 characters long; a search takes at most 256 (and 32 words)"
    assert page.status_code == 400 and reason in page.text
    assert api.status_code == 400 and api.json() == {"error": reason, "status": 400}
    assert words.status_code == 400 and words.json()["error"] == "the query holds 40 words; a search takes at most 32"
    assert ok.status_code == 200
    log = capfd.readouterr().err
    assert "Traceback" not in log and "RecursionError" not in log and "500" not in log, log[:2000]


# --------------------------------------------------------------------------- 9: input errors


def test_input_errors_are_typed_and_exit_2(index):
    res = run("search", index, "--unit", "layer4:99999")
    assert res.exit_code == 2  # the README's status for a unit out of range, said before a model loads
    assert one_line(res) == "error: layer 'layer4' has units 0..511, got 99999"
    for query in ("and or , ,", "or", ", and ,"):
        res = run("search", index, query)
        assert res.exit_code == 2 and one_line(res) == f"error: the query {query!r} holds no word; give one such as 'dog'"


def test_library_input_errors_name_their_parameter(index):
    """Every check on the search and organize paths is an ArgumentError naming its parameter,
    which the CLI's table turns into exit 2 and the flag."""
    with Index.open(index) as idx:
        calls = {
            "top": lambda: idx.search("dog", top=0),
            "sort": lambda: idx.search("dog", sort="size"),
            "min_score": lambda: idx.search("dog", min_score=1.5),
            "query": lambda: idx.search("zz " * 200),
            "target": lambda: idx.like(idx.entries),
            "vector": lambda: idx.like(np.full(idx.embedding.shape[1], np.nan, np.float32)),
            "unit": lambda: idx.unit("layer4", 512, boxes=False),
            "row": lambda: search.unit_at(idx, "layer4", 3, idx.entries),
            "threshold": lambda: idx.duplicates(threshold=1.5),
            "confidence": lambda: idx.albums(confidence=-0.1),
        }
        for param, call in calls.items():
            with pytest.raises(ArgumentError) as err:
                call()
            assert err.value.param == param, (param, str(err.value))
            code, line = describe_error(err.value)
            assert code == 2 and "\n" not in line and "ValueError" not in line, (param, line)
            if param == "top":  # said as the flag
                assert line == "--top must be a whole number of results, at least 1, got 0"


# --------------------------------------------------------------------------- 17: an empty index


def test_an_empty_index_says_so_and_how_to_fill_it(photos, tmp_path):
    empty = tmp_path / "empty"
    res = run("index", photos / "junk", "--out", empty, *BUILD)
    assert res.exit_code == 1 and "(0 entries, 1 skipped)" in res.output, res.output
    note = (f"note: the index in {empty} is empty (its build skipped 1 file); add photos and videos with "
            f"`convscope index PATHS --out {empty} --update`")
    for args in (["organize"], ["organize", "--json"], ["duplicates"], ["duplicates", "--json"],
                 ["search", "--unit", "layer4:3"], ["search", "dog"], ["search", "--like", photos / "mix" / "coffee.png"]):
        res = run(args[0], empty, *args[1:])
        assert res.exit_code == 0 and res.stdout == "" and one_line(res) == note, (args, res.output)
    assert run("search", empty, "dogg").exit_code == 1  # a word it does not know is still said
    assert run("search", empty, "--unit", "layer4:512").exit_code == 2  # and a unit out of range
    # the note's command works, with PATHS
    follow = [photos / "mix" if a == "PATHS" else a for a in hinted(res)]
    res = run(*follow, *BUILD)
    assert res.exit_code == 0 and "(3 entries, 1 skipped)" in res.output, res.output
    albums = run("organize", empty, "--json")
    assert albums.exit_code == 0 and len(albums.stdout.splitlines()) >= 1


# --------------------------------------------------------------------------- 14: hints that work


def test_an_unfinished_index_names_the_command_that_finishes_it(photos, tmp_path, monkeypatch):
    out = tmp_path / "half"
    interrupted(monkeypatch, photos / "mix", "--out", out, *BUILD)
    res = run("search", out, "dog")
    assert res.exit_code == 1 and "is incomplete (its build stopped before the end)" in one_line(res)
    command = hinted(res)
    assert command == ["index", str(photos / "mix"), "--out", str(out), "--resume", "--model", "torchvision:resnet18",
                       "--no-pretrained", "--layers", "layer4"]
    done = run(*command, "--workers", 0)  # literally, as printed
    assert done.exit_code == 0 and "(3 entries, 1 skipped)" in done.output, done.output
    assert run("search", out, "entity", "--min-score", 0, "--json").exit_code == 0


def test_the_index_command_hints_work(photos, index, tmp_path, monkeypatch):
    out = tmp_path / "again"
    shutil.copytree(index, out)
    # a finished index: --update
    res = run("index", photos / "mix", "--out", out, *BUILD)
    assert res.exit_code == 2 and "already holds an index; give --update to add new and changed files" in one_line(res)
    res = run("index", photos / "mix", "--out", out, "--update", *BUILD)
    assert res.exit_code == 0, res.output
    # an update stopped half-way: --update with --resume
    interrupted(monkeypatch, photos / "mix", "--out", out, "--update", *BUILD)
    res = run("index", photos / "mix", "--out", out, *BUILD)
    assert res.exit_code == 2 and "holds an unfinished index update; give --update with --resume (and the same PATHS)" \
        in one_line(res)
    res = run("index", photos / "mix", "--out", out, "--update", "--resume", *BUILD)
    assert res.exit_code == 0 and "(3 entries, 1 skipped)" in res.output, res.output


def test_a_missing_or_foreign_index_names_a_build_that_works(photos, tmp_path):
    nowhere = tmp_path / "nowhere"
    res = run("search", nowhere, "dog")
    assert res.exit_code == 1 and one_line(res).startswith(f"error: no index folder {nowhere}; build one with")
    res = run(*[photos / "mix" if a == "PATHS" else a for a in hinted(res)], *BUILD)
    assert res.exit_code == 0, res.output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "index.sqlite").write_bytes(b"not a database" * 100)
    res = run("search", foreign, "dog")
    assert res.exit_code == 1 and "build the index again in a new folder" in one_line(res)
    new = tmp_path / "new"
    res = run(*[photos / "mix" if a == "PATHS" else new if a == "NEW" else a for a in hinted(res)], *BUILD)
    assert res.exit_code == 0 and run("search", new, "entity", "--min-score", 0).exit_code == 0


def test_words_that_narrow_to_nothing_name_a_search_that_works(index):
    res = run("search", index, "dog cat")
    assert res.exit_code == 1
    suggested = re.search(r"search '([^']+)' for photos of any of them", one_line(res)).group(1)
    assert suggested == "dog, cat" and run("search", index, suggested).exit_code == 0
