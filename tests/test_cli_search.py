"""`index`, `search`, `duplicates`, `organize`, `evolve` and `probe` through the real command line
(click's CliRunner): a random-initialized ResNet-18 checks structure, the embedded
EfficientNet-Lite0 what needs trained weights (chelsea is a cat)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from convscope.cli import main

RESNET = ["--model", "torchvision:resnet18", "--no-pretrained", "--device", "cpu"]
CHELSEAS = {"chelsea.png", "chelsea_copy.png", "chelsea_small.jpg"}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def records(res) -> list[dict]:
    return [json.loads(line) for line in res.stdout.splitlines()]


def names(paths) -> list[str]:
    return [Path(p).name for p in paths]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sample_dir) -> Path:
    """``lib/``: five sample photos, a byte copy and a half-size JPEG of chelsea, and a file that
    is not an image with a newline in its name; ``outside.jpg``: chelsea, not in ``lib/``."""
    root = tmp_path_factory.mktemp("photos")
    lib = root / "lib"
    (lib / "copies").mkdir(parents=True)
    for name in ("chelsea", "coffee", "rocket", "astronaut", "coins"):
        shutil.copy(sample_dir / f"{name}.png", lib / f"{name}.png")
    shutil.copy(lib / "chelsea.png", lib / "copies" / "chelsea_copy.png")
    chelsea = Image.open(lib / "chelsea.png").convert("RGB")
    chelsea.resize((chelsea.width // 2, chelsea.height // 2)).save(lib / "copies" / "chelsea_small.jpg", quality=90)
    chelsea.resize((200, 150)).save(root / "outside.jpg", quality=85)
    (lib / "bad\nname.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def tiny(photos, tmp_path_factory):
    """An index of ``lib/`` by the random ResNet-18, units of layer1 and layer4; (folder, result)."""
    out = tmp_path_factory.mktemp("tiny") / "index"
    res = run("index", photos / "lib", "--out", out, "--layers", "layer1,layer4", "--workers", 0, "--batch-size", 8,
              "--json", *RESNET)
    return out, res


@pytest.fixture(scope="module")
def real(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real") / "index"
    res = run("index", photos / "lib", "--out", out, "--workers", 0, "--device", "cpu")
    assert res.exit_code == 0, res.output
    return out


# --------------------------------------------------------------------------- index


def test_index_record_and_bad_files_one_line_each(tiny, photos, tmp_path):
    out, res = tiny
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert (record["out"], record["photos"], record["entries"], record["skipped"]) == (str(out), 7, 7, 1)
    assert record["layers"] == ["layer1", "layer4"] and record["model"] == "torchvision:resnet18"
    lines = [line for line in res.stderr.splitlines() if line.startswith("skipped ")]
    assert len(lines) == 1 and "bad\\nname.jpg: " in lines[0]  # the newline shown, not printed
    again = run("index", photos / "lib", "--out", out)  # the library's refusal, said in flags
    assert again.exit_code == 2 and "give --update" in again.output
    nothing = run("index", photos / "lib" / "bad\nname.jpg", "--out", tmp_path / "none", "--workers", 0, *RESNET)
    assert nothing.exit_code == 1 and "(0 entries, 1 skipped)" in nothing.stderr, nothing.output


# --------------------------------------------------------------------------- search


def test_search_cat_puts_chelsea_first_and_says_why(real):
    res = run("search", real, "cat", "--json")
    assert res.exit_code == 0, res.output
    rows = records(res)
    assert names(r["path"] for r in rows)[0] in CHELSEAS and set(names(r["path"] for r in rows)) == CHELSEAS
    first = rows[0]
    assert set(first) == {"path", "time", "score", "why"} and first["time"] is None
    assert set(first["why"][0]) == {"kind", "index", "label", "probability", "path"} and first["why"][0]["kind"] == "class"
    assert first["why"][0]["path"][0] == first["why"][0]["label"] and first["why"][0]["path"][-1] == "cat"
    table = run("search", real, "cat", "--top", 1, "--sort", "date")
    assert table.exit_code == 0 and "chelsea" in table.stdout and " > cat" in table.stdout
    assert run("search", real, "cat", "--min-score", 1).stdout == ""


def test_like_a_copy_of_chelsea_finds_chelsea(real, photos):
    res = run("search", real, "--like", photos / "outside.jpg", "--top", 3, "--json")  # embedded by the index's model
    assert res.exit_code == 0, res.output
    rows = records(res)
    assert set(names(r["path"] for r in rows)) == CHELSEAS and all(r["why"] == [] for r in rows)
    res = run("search", real, "--like", photos / "lib" / "chelsea.png", "--top", 2, "--json")  # an indexed photo
    assert set(names(r["path"] for r in records(res))) == CHELSEAS - {"chelsea.png"}


def test_unit_search_gives_boxes_and_pictures(tiny, tmp_path):
    out, _ = tiny
    res = run("search", out, "--unit", "layer4:3", "--top", 3, "--explain", tmp_path / "why", "--json", *RESNET)
    assert res.exit_code == 0, res.output
    rows = records(res)
    assert len(rows) == 3 and all(len(r["box"]) == 4 for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    pictures = sorted(p.name for p in (tmp_path / "why").iterdir())
    assert pictures == [f"{n:02d}_{Path(r['path']).stem}.png" for n, r in enumerate(rows, 1)]
    for args, needle in ((["--unit", "layer4"], "LAYER:UNIT"), (["--unit", "layer9:1"], "Close matches: layer4, layer1")):
        bad = run("search", out, *args, *RESNET)
        assert bad.exit_code == 2 and needle in bad.output, bad.output


def test_unknown_word_is_one_line_and_exit_1(tiny):
    out, _ = tiny
    for query, needle in (("catt", "error: unknown word 'catt'. Close matches: cat"), ("dog cat", "dog, cat")):
        res = run("search", out, query)
        assert res.exit_code == 1 and res.output.count("\n") == 1 and needle in res.output, res.output
    for args in ([], ["cat", "--like", "x.jpg"], ["--unit", "layer4:1", "--sort", "date"]):
        assert run("search", out, *args).exit_code == 2


# --------------------------------------------------------------------------- organize


def test_duplicates_group_an_exact_and_a_resized_copy(real):
    res = run("duplicates", real, "--json")
    assert res.exit_code == 0, res.output
    groups = [set(names(g["paths"])) for g in records(res)]
    assert CHELSEAS in groups and all(len(g) > 1 for g in groups)
    assert "group 1: " in run("duplicates", real).stdout


def test_organize_puts_every_file_in_one_album(real):
    res = run("organize", real, "--json")
    assert res.exit_code == 0, res.output
    albums = records(res)
    assert all(set(a) == {"album", "kind", "paths", "covers", "why"} for a in albums)  # (the covers, with why: issue 23)
    paths = [p for a in albums for p in a["paths"]]
    assert len(paths) == len(set(paths)) == 7
    cats = next(a for a in albums if a["album"] == "animals > cats")
    assert "chelsea.png" in names(cats["paths"])
    assert cats["kind"] == "category" and set(cats["covers"]) <= set(cats["paths"])


# --------------------------------------------------------------------------- training


def test_evolve_writes_its_grid_and_records(photos, tmp_path):
    import torch
    import torchvision

    checkpoints = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        checkpoints.append(tmp_path / f"ep{seed}.pt")
        torch.save(torchvision.models.resnet18().state_dict(), checkpoints[-1])
    out = tmp_path / "evolve"
    res = run("evolve", *sorted((photos / "lib").glob("*.png")), "--model", "torchvision:resnet18",
              "--weights", checkpoints[0], "--weights", checkpoints[1], "--layers", "layer1", "--count", 1,
              "--top", 2, "--workers", 0, "--device", "cpu", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    rows = records(res)
    assert [(r["layer"], r["unit"] is None, r["from"], r["to"]) for r in rows] == \
        [("layer1", True, "ep1", "ep2"), ("layer1", False, "ep1", "ep2")]
    assert 0 <= rows[1]["overlap"] <= 1
    assert sorted(p.name for p in out.iterdir()) == ["cells", "evolve-changes.png", "evolve-layer1.png", "evolve.json", "evolve.jsonl"]
    assert Image.open(out / "evolve-layer1.png").size[0] > 64
    one = run("evolve", photos / "lib", "--weights", checkpoints[0], "--out", out)
    assert one.exit_code == 2 and "two or more checkpoints" in one.output


def test_evolve_takes_checkpoints_repeated_or_as_a_comma_list(tmp_path):
    from convscope.cli.training import _checkpoints

    odd = tmp_path / "run,3.pt"  # a file whose name has a comma stays one checkpoint
    odd.write_bytes(b"")
    assert _checkpoints(["a.pt,b.pt", "c.pt", str(odd)]) == ["a.pt", "b.pt", "c.pt", str(odd)]


def test_probe_prints_one_record_per_layer(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "classes"
    for name, colour in (("blue", (30, 60, 200)), ("red", (200, 40, 30))):
        (data / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(data / name / f"{i}.png")
    res = run("probe", data, "--layers", "layer1,layer4", "--folds", 3, "--out", tmp_path / "plot", "--workers", 0,
              "--json", *RESNET)
    assert res.exit_code == 0, res.output
    rows = records(res)
    assert [r["layer"] for r in rows] == ["layer1", "layer4"]
    assert all(set(r) == {"layer", "accuracy", "std", "n"} and r["n"] == 12 for r in rows)
    assert rows[0]["accuracy"] > 0.9  # colour is what a random first layer separates
    assert (tmp_path / "plot" / "probe.png").is_file()
    few = run("probe", data, "--layers", "layer1", "--folds", 7, *RESNET)
    assert few.exit_code == 2 and few.output.startswith("error: class 'blue' has 6 readable photos"), few.output
