"""The command line's grammar: lazy start-up without torch, one-line errors and exit codes,
old option spellings, JSON records, and one progress bar per phase."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner

from convscope.cli import main
from convscope.cli._common import Group, renamed
from convscope.errors import (ArgumentError, ConvscopeError, FolderInUseError, UnknownLayerError, UnknownModelError,
                              UnknownWordError)


def _python(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


# --------------------------------------------------------------------------- start-up


def test_help_of_every_command_imports_no_torch():
    out = _python("""
        import sys
        import click
        import convscope, convscope.cli
        assert "torch" not in sys.modules, "import convscope.cli"
        from convscope.cli import main

        def paths(group, prefix):
            ctx = click.Context(group)
            for name in group.list_commands(ctx):
                cmd = group.get_command(ctx, name)
                yield prefix + [name]
                if isinstance(cmd, click.Group):
                    yield from paths(cmd, prefix + [name])

        seen = []
        for args in [[]] + list(paths(main, [])):
            try:
                main(args + ["--help"], prog_name="convscope")
            except SystemExit as exc:
                assert exc.code == 0, (args, exc.code)
            assert "torch" not in sys.modules, args
            seen.append(" ".join(args))
        print("|".join(seen))
    """)
    assert out.returncode == 0, out.stderr
    seen = out.stdout.strip().splitlines()[-1].split("|")
    assert {"classify", "layers", "models", "atlas", "atlas build", "atlas info", "atlas show", "project",
            "featvis", "explain", "invariance", "serve", "export", "demo", "index", "search", "duplicates",
            "organize", "evolve", "probe"} <= set(seen)


def test_a_command_imports_only_its_own_module():
    out = _python("""
        import sys
        from convscope.cli import main
        try:
            main(["classify", "--help"])
        except SystemExit:
            pass
        print(sorted(m for m in sys.modules if m.startswith("convscope.cli.")))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['convscope.cli._common', 'convscope.cli.classify']"


def test_package_names_load_on_first_use():
    import convscope

    assert callable(convscope.scan) and callable(convscope.classify)
    import convscope.classify as submodule  # the package keeps the function, as before it was lazy

    assert callable(submodule) and convscope.load_model.__module__ == "convscope.models"
    assert set(convscope.__all__) <= set(dir(convscope))
    with pytest.raises(AttributeError):
        convscope.no_such_name


def test_choices_are_the_library_registries():
    """--help lists names from convscope.choices, which keys the library's registries: the CLI's
    choices and defaults are the library's, with no copy to drift."""
    from convscope import backproject, explain, featvis, index, model_names, models, probe, scan_settings
    from convscope.atlas import store
    from convscope.cli import main
    from convscope.evolve import DEFAULT_UNITS
    from convscope.index import search

    def option(path: str, name: str) -> click.Parameter:
        ctx, cmd = click.Context(main), main
        for word in path.split():
            cmd = cmd.get_command(ctx, word)
        return next(p for p in cmd.params if p.name == name)

    def choices(path: str, name: str) -> list[str]:
        return list(option(path, name).type.choices)

    assert choices("project", "method") == list(backproject.METHODS)
    for name, rule in backproject.METHODS.items():
        assert f"{name}: {rule.description}" in option("project", "method").help
    assert choices("explain", "methods") == list(explain.METHODS)
    assert choices("invariance", "transform") == list(explain.TRANSFORMS)
    assert choices("featvis", "param") == list(featvis.PARAMS)
    assert choices("atlas build", "rank_by") == list(scan_settings.RANK_BY)
    assert choices("atlas build", "deconvnet") == ["auto", "always"]
    assert choices("search", "sort") == list(search.SORTS)
    assert option("search", "min_score").default == index.MIN_SCORE
    assert choices("probe", "pool") == list(probe.POOLS)
    assert choices("evolve", "method") == list(store.METHODS) and set(store.METHODS) <= set(backproject.METHODS)
    assert option("evolve", "count").default == DEFAULT_UNITS
    assert list(model_names.BUILTIN) == models.available_models()
    assert models.DEFAULT_MODEL == model_names.DEFAULT_MODEL


def test_a_registry_must_hold_its_names():
    from convscope.choices import keyed

    assert list(keyed(("b", "a"), {"a": 1, "b": 2})) == ["b", "a"]
    with pytest.raises(RuntimeError, match="change both"):
        keyed(("a", "b"), {"a": 1, "c": 2})


def test_imagenet_labels_are_timms():
    from timm.data import ImageNetInfo

    from convscope.models import imagenet_labels

    info = ImageNetInfo()
    assert imagenet_labels() == [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]


# --------------------------------------------------------------------------- errors and exit codes


def _raising(exc: BaseException) -> Group:
    group = Group()

    @group.command()
    def boom():
        raise exc

    return group


@pytest.mark.parametrize("exc, code, needle", [
    (UnknownLayerError("unknown layer 'x'. Run `convscope layers` to list them."), 2, "error: unknown layer 'x'."),
    (UnknownModelError("unknown model 'y'"), 2, "error: unknown model 'y'"),
    (ConvscopeError("no atlas folder z"), 1, "error: no atlas folder z"),
    (FileNotFoundError(2, "No such file or directory", "f.jpg"), 1, "error: [Errno 2] No such file or directory: 'f.jpg'"),
    (TypeError("unsupported operand"), 1, "error: TypeError: unsupported operand (set CONVSCOPE_DEBUG=1"),
    (KeyError("weights"), 1, "error: KeyError: 'weights' (set CONVSCOPE_DEBUG=1"),
    (ValueError("too many values to unpack"), 1, "error: ValueError: too many values"),
    # a library error speaks of parameters, in backticks; the CLI says them as its flags
    (FolderInUseError("d holds an unfinished build; give `resume=True` (and the same `inputs`), or another `out`",
                      param="out"), 2, "error: d holds an unfinished build; give --resume (and the same PATHS), or another --out\n"),
    (ArgumentError("fewer than `folds=7`; or `pretrained=False` (run `convscope layers`)", param="folds"), 2,
     "error: fewer than --folds 7; or --no-pretrained (run `convscope layers`)\n"),
    (UnknownWordError("unknown word 'catt'. Close matches: cat."), 1, "error: unknown word 'catt'."),
])
def test_errors_are_one_line_with_their_exit_status(exc, code, needle, monkeypatch):
    monkeypatch.delenv("CONVSCOPE_DEBUG", raising=False)
    res = CliRunner().invoke(_raising(exc), ["boom"])
    assert res.exit_code == code and res.output.startswith(needle) and res.output.count("\n") == 1, res.output


@pytest.mark.parametrize("exc", [UnknownLayerError("u"), ConvscopeError("c"), TypeError("t"), KeyError("k"),
                                 ValueError("v"), OSError("o")])
def test_debug_shows_every_exception(exc, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_DEBUG", "1")
    res = CliRunner().invoke(_raising(exc), ["boom"])
    assert res.exception is exc or isinstance(res.exception, type(exc))
    assert "error:" not in res.output


def test_usage_errors_exit_2():
    res = CliRunner().invoke(main, ["featvis", "--units", "0-3", "--out", "x"])
    assert res.exit_code == 2 and "Missing option '--layers'" in res.output
    res = CliRunner().invoke(main, ["featvis", "--layers", "layer1", "--units", "3-a", "--out", "x"])
    assert res.exit_code == 2 and "cannot read '3-a'" in res.output
    res = CliRunner().invoke(main, ["classify", "x.jpg", "--device", "gpu0"])
    assert res.exit_code == 2 and "use cpu, cuda or cuda:N" in res.output


# --------------------------------------------------------------------------- old spellings


def test_renamed_option_keeps_the_old_spelling_with_a_note():
    @click.command()
    @click.option("--layers", default=None)
    @renamed("--layer", "--layers", required=True)
    def cmd(layers):
        click.echo(f"layers={layers}")

    res = CliRunner().invoke(cmd, ["--layer", "a,b"])
    assert res.exit_code == 0 and res.stdout == "layers=a,b\n"
    assert res.stderr == "note: --layer is deprecated and goes in the next release; use --layers\n"
    assert CliRunner().invoke(cmd, ["--layers", "a"]).stderr == ""
    res = CliRunner().invoke(cmd, ["--layers", "a", "--layer", "b"])
    assert res.exit_code == 2 and "give --layers only" in res.output
    res = CliRunner().invoke(cmd, [])
    assert res.exit_code == 2 and "Missing option '--layers'" in res.output
    assert "--layer " not in CliRunner().invoke(cmd, ["--help"]).output  # hidden


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(path)
    return path


RESNET = ["--model", "torchvision:resnet18", "--no-pretrained", "--device", "cpu"]


def test_project_records_and_old_spellings(photo, tmp_path):
    res = CliRunner().invoke(main, ["project", str(photo), "--layers", "layer1,layer2", "--units", "0-2",
                                    "--out", str(tmp_path), "--npy", "--json", *RESNET])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["layer"], r["unit"]) for r in rows] == [(l, u) for l in ("layer1", "layer2") for u in range(3)]
    for r in rows:
        png, npy = r["files"][1], r["files"][0]
        assert png == str(tmp_path / f"cat-{r['layer']}-{r['unit']}-deconvnet.png") and npy.endswith(".npy")
    old = CliRunner().invoke(main, ["project", str(photo), "--layer", "layer2", "--unit", "1", "--out",
                                    str(tmp_path / "old.png"), "--json", *RESNET])
    assert old.exit_code == 0, old.output
    assert old.stderr.count("deprecated") == 3 and (tmp_path / "old.png").is_file()
    record = json.loads(old.stdout)
    assert (record["y"], record["x"]) == (rows[4]["y"], rows[4]["x"])
    assert record["activation"] == pytest.approx(rows[4]["activation"], rel=1e-5)
    res = CliRunner().invoke(main, ["project", str(photo), "--layers", "layer2", "--units", "1,2", "--out",
                                    str(tmp_path / "one.png"), *RESNET])
    assert res.exit_code == 2 and "2 projections asked for" in res.output


def test_models_json_records():
    res = CliRunner().invoke(main, ["models", "--json"])
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.exit_code == 0 and [r["spec"] for r in rows] == ["efficientnet_lite0", "timm:NAME", "torchvision:NAME"]


# --------------------------------------------------------------------------- progress


def test_nested_bars_count_into_the_open_one(monkeypatch, capsys):
    from convscope import progress

    monkeypatch.setenv("CONVSCOPE_PROGRESS", "1")
    monkeypatch.setattr(progress, "LINE_EVERY", 0.0)
    with progress.Bar(4, "phase") as outer:
        for _ in range(2):
            with progress.Bar(2, "library") as inner:
                inner.advance()
                inner.advance()
    assert outer.completed == 4
    lines = capsys.readouterr().err.splitlines()  # off a terminal: plain lines, each with the count
    assert lines[0] == "phase 1/4 0:00:00 elapsed, 0:00:00 left" and lines[-1].startswith("phase 4/4 in ")
    assert len(lines) == 5 and not any("library" in line for line in lines)
    with progress.Bar(2, "quiet", disable=True):
        with progress.Bar(2, "inside") as inner:
            inner.advance(2)
    assert capsys.readouterr().err == ""


def test_featvis_over_several_layers_is_one_bar(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVSCOPE_PROGRESS", "1")
    res = CliRunner().invoke(main, ["featvis", "--layers", "layer1,layer2", "--units", "0-2", "--steps", "2",
                                    "--size", "32", "--batch-size", "2", "--out", str(tmp_path), "--json", *RESNET])
    assert res.exit_code == 0, res.output
    assert [(r["layer"], r["unit"]) for r in map(json.loads, res.stdout.splitlines())] == \
        [(l, u) for l in ("layer1", "layer2") for u in range(3)]
    bars = [line for line in res.stderr.splitlines() if line.startswith("featvis")]
    assert len(bars) == 1 and bars[0].startswith("featvis 2 layers 8/8 in "), res.stderr  # 2 x 2 chunks x 2 steps


def test_demo_model_builds_its_own_recipe(monkeypatch, tmp_path):
    from convscope.web import demo

    asked = []
    monkeypatch.setattr(demo, "ensure_demo_atlas", lambda out, images, rebuild, recipe, echo: asked.append(recipe) or out)
    monkeypatch.setattr(demo, "ensure_demo_index", lambda out, *a, **k: out)
    for args in ([], ["--model", demo.RECIPE["model"]], ["--model", "torchvision:resnet18", "--no-pretrained"]):
        res = CliRunner().invoke(main, ["demo", "--no-serve", "--out", str(tmp_path), *args])
        assert res.exit_code == 0, res.output
    assert asked[0] is None and asked[1] == demo.RECIPE
    from convscope.models import load_model

    default = load_model("torchvision:resnet18", pretrained=False, device="cpu").layers.default
    assert asked[2] == {**demo.RECIPE, "model": "torchvision:resnet18", "pretrained": False, "layers": default}


def test_atlas_build_show_export_records(photo, tmp_path, monkeypatch):
    from convscope.atlas import Atlas

    out = tmp_path / "atlas"
    args = ["atlas", "build", str(photo), "--out", str(out), "--layers", "layer1", "--top", "1", "--project", "0",
            "--workers", "0", "--json", *RESNET]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["layers"] == ["layer1"] and record["units"] == 64 and record["images"]["scanned"] == 1
    res = CliRunner().invoke(main, args)  # the library's refusal, its parameters said as flags: a usage error
    assert res.exit_code == 2 and "give --overwrite to replace it, or another --out" in res.output
    res = CliRunner().invoke(main, ["atlas", "show", str(out), "--layers", "layer1", "--units", "0,5", "--json"])
    assert res.exit_code == 0 and [json.loads(l)["unit"] for l in res.stdout.splitlines()] == [0, 5]
    with Atlas.open(out) as atlas:
        spec = atlas.info()["model"]["spec"]
    res = CliRunner().invoke(main, ["export", str(out), "--out", str(tmp_path / "site"), "--model", spec, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["pages"] > 0, res.output
    res = CliRunner().invoke(main, ["export", str(out), "--static", str(tmp_path / "old"), "--model", "timm:resnet18"])
    assert res.exit_code == 2 and "was built with 'torchvision:resnet18', not 'timm:resnet18'" in res.output
    assert "note: --static is deprecated" in res.output
    res = CliRunner().invoke(main, ["atlas", "info", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["unreadable"] == []
    monkeypatch.setattr(Atlas, "unreadable", lambda self: [("/photos/gone\n.jpg", "cannot read (No such file)")])
    res = CliRunner().invoke(main, ["atlas", "info", str(out), "--json"])
    assert json.loads(res.stdout)["unreadable"] == [{"path": "/photos/gone\n.jpg", "reason": "cannot read (No such file)"}]
    res = CliRunner().invoke(main, ["atlas", "info", str(out)])
    assert res.exit_code == 0 and "unreadable   1 scanned photo(s)" in res.stdout
    assert "  /photos/gone\\n.jpg: cannot read (No such file)\n" in res.stdout  # one line, the newline shown

    import convscope.web

    served = []
    monkeypatch.setattr(convscope.web, "serve", lambda app, host, port: served.append((app, host, port)))
    res = CliRunner().invoke(main, ["serve", str(out), "--allow-host", "gallery.example.org", "--allow-host", "photos.lan",
                                    "--port", "8123"])
    assert res.exit_code == 0, res.output
    app, host, port = served[0]
    assert (host, port) == ("127.0.0.1", 8123)
    assert {"gallery.example.org", "photos.lan"} <= set(app.state.allowed_hosts) and "evil.example" not in app.state.allowed_hosts
