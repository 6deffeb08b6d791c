"""`convscope index | search | duplicates | organize`: photos and videos indexed once, then found
by a word, by an example photo or by a unit of the network (``docs/search.md``)."""
from __future__ import annotations

import re
import shlex
import time

import click

from ..choices import MIN_SCORE, SORTS
from ..files import printable_path
from ._common import LAYERS, emit, model_options, note, report_built, report_skipped
from ._ray import ray_options


@click.command("index")
@click.argument("paths", nargs=-1)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for the index.")
@click.option("--fps", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Video frames sampled per second of video.")
@click.option("--update", is_flag=True,
              help="Refresh the index in --out: new and changed files are computed, unchanged ones kept, "
                   "deleted ones dropped (no PATHS: the inputs it was built from).")
@click.option("--resume", is_flag=True, help="Continue an interrupted build in --out (same PATHS and options).")
@click.option("--layers", type=LAYERS, default=None,
              help="Layers whose units `search --unit` can ask for (default: `convscope layers --default-only`).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096), help="Model inputs per forward pass.")
@click.option("--workers", default=None, type=click.IntRange(0, 64), help="Decoding processes (default: by input count).")
@click.option("--text/--no-text", "text", default=None,
              help="Recognize text in photos (signs, documents, screenshots), for search by the words written in "
                   "them (default: where the OCR engine is installed, `pip install 'convscope[text]'`).")
@click.option("--watch", is_flag=True,
              help="Then keep the index up to date until Ctrl+C: a photo added, changed or deleted in PATHS is "
                   "indexed once it has not changed for --settle seconds (a file being copied is not read half-written).")
@click.option("--settle", default=2.0, show_default=True, type=click.FloatRange(0),
              help="With --watch: seconds a file must stay unchanged before it is read.")
@click.option("--info", "show_info", is_flag=True,
              help="Say what the index in --out holds (entries, files, model, layers) instead of indexing; a build "
                   "in progress shows its latest snapshot, NOT COMPLETE.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON record for the index written: out, entries, photos, videos, skipped, model, layers, seconds.")
@ray_options
@model_options
def index(paths, out, fps, update, resume, layers, batch_size, workers, text, watch, settle, show_info, as_json, ray,
          ray_workers, model_args):
    """Index photos and videos (files, folders, globs, @LIST files) into --out, once, for
    `convscope search`, `duplicates` and `organize`.

    Per photo, and per sampled video frame, the index keeps the class probabilities, an
    embedding, the strongest response of every unit of --layers and a thumbnail; per file,
    where (EXIF GPS, named offline) and when it was taken; with --text, the words written in
    it. --update adds what an index built by an older convscope lacks (places, text) without
    running the network again on unchanged files. Bad files are
    skipped with one line each and counted; a build killed half-way continues with --resume.
    With --ray the forward passes run on Ray workers, and the index is the one a single process
    writes.

    \b
    Examples:
      convscope index photos/ clips/ --out photos.index
      convscope index --update --out photos.index        # after adding, changing or deleting photos
      convscope index photos/ --out photos.index --resume
      convscope index photos/ --out photos.index --ray --ray-workers 2
      convscope index photos/ --out photos.index --watch   # and keep it up to date
      convscope index --out photos.index --info
    """
    from ..index import Index
    from ..index.build import check_out

    if show_info:
        return _info(out, as_json)

    if not paths and not update:
        raise click.UsageError("give photos and videos to index (files, folders, globs or @LIST files)")
    if watch:
        return _watch(paths, out, settle, model_args, fps=fps, batch_size=batch_size, workers=workers, layers=layers,
                      text=text, ray=ray, ray_workers=ray_workers)
    check_out(out, update=update, resume=resume)  # before the model loads
    model = model_args.load()
    started = time.time()
    with Index.build(model, list(paths) or None, out, fps=fps, update=update, resume=resume, batch_size=batch_size,
                     workers=workers, layers=layers, on_skip=report_skipped, ray=ray, ray_workers=ray_workers,
                     text=text, on_note=note) as built:
        info = built.info()
    for kind, count in info["notes"].items():
        note(f"{count} file{'s' * (count != 1)} with untrue or capped {kind} metadata: ignored (`notes` in the index's files)")
    report_built(f"index of {info['photos']} photos and {info['videos']} videos ({info['entries']} entries, "
                 f"{info['skipped']} skipped)", out, {k: v for k, v in info.items() if k != "path"},
                 time.time() - started, as_json, info["entries"])


def _info(out, as_json) -> None:
    """``index --info``: the index in ``out``, or the latest snapshot of its build in progress."""
    from ..index import Index

    with Index.open(out, building=True) as idx:
        info = idx.info()
    if as_json:
        emit(info)
        return
    building = info["building"]
    if building is not None:
        click.echo(f"NOT COMPLETE: a snapshot of a build in progress ({building['files_done']} of {building['files']} "
                   f"files indexed, at {building['updated']}); finish it with `convscope index ... --resume` if it stopped")
    click.echo(f"entries      {info['entries']} ({info['photos']} photos, {info['videos']} videos, "
               f"{info['skipped']} skipped)")
    click.echo(f"model        {info['model']}; layers {', '.join(info['layers'])}")
    click.echo(f"built        {info['built'] or '-'} in {info['seconds'] or '-'} s; signals {', '.join(info['signals'])}")


def _watch(paths, out, settle, model_args, **options) -> None:
    """``index --watch``: build or update, then follow PATHS until Ctrl+C, a line per update."""
    from ..index import Index
    from ..index.build import check_out
    from ..index.watch import watch

    check_out(out, update=True, resume=True)  # a second writer: one line, before the model loads
    if not paths:
        with Index.open(out) as idx:
            paths = idx.meta["inputs"]
    model = model_args.load()
    click.echo(f"watching {', '.join(printable_path(p) for p in paths)} for {printable_path(out)} (Ctrl+C to stop)",
               err=True)
    try:
        watch(model, list(paths), out, settle=settle, on_change=lambda done: click.echo(done.line(), err=True),
              on_skip=report_skipped, on_note=note, **options)
    except KeyboardInterrupt:
        click.echo(f"stopped; {printable_path(out)} holds the last complete update", err=True)


@click.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False))
@click.argument("query", nargs=-1)
@click.option("--top", default=20, show_default=True, type=click.IntRange(1, 100_000), help="Results at most.")
@click.option("--min-score", default=MIN_SCORE, show_default=True, type=click.FloatRange(0, 1),
              help="Keyword results: the least probability of the matched classes (0 keeps every photo with any).")
@click.option("--sort", default="score", show_default=True, type=click.Choice(SORTS),
              help="Keyword results by score, or by date (EXIF, else the file's time; newest first).")
@click.option("--like", "like", default=None, metavar="FILE_OR_INDEXED_PATH",
              help="Instead of a QUERY: the photos most like this one (indexed, or any photo file), by embedding.")
@click.option("--unit", "unit", default=None, metavar="LAYER:UNIT",
              help="Instead of a QUERY: the photos that excite this unit most, e.g. blocks.4:17, with its box.")
@click.option("--explain", "explain_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for one picture per result, NN_<name>.png in result order: where the network saw "
                   "the matched class (Grad-CAM), or the unit's receptive-field box.")
@click.option("--words", "words_file", default=None, type=click.Path(dir_okay=False),
              help="A JSON file of your own everyday words and the classes that are evidence for them "
                   "(docs/search.md), added to the shipped ones.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON record per result, best first: {"path", "time", "score", "why": [{"kind", ...}]}, '
                   'each piece of evidence with its kind (class, word, place, time, text: docs/search.md), '
                   'with "end" for a video segment and "box" for --unit.')
@model_options(own="index")
def search(index_dir, query, top, min_score, sort, like, unit, explain_dir, words_file, as_json, model_args):
    """Search an index by words (QUERY), by an example photo (--like) or by a unit of the
    network (--unit). Every result says why: the classes the network saw (with the WordNet path
    up to the word, or why they are evidence for an everyday word), where and when the photo
    was taken, the text read in it.

    Words are WordNet nouns for the ImageNet classes and their kinds ("dog" finds every breed,
    "vehicle" every car, boat and plane), everyday words (people, beach, snow, food), places
    the photos were taken (lyon, france), times ("2015", "may 2015", "2015-05-02", "night")
    and, on an index built with --text, words written in the photos ("\"open\"" for the text
    alone). Commas, "or" and "and" list alternatives ("dog, cat"); words side by side narrow
    each other ("dog france 2015"). An unknown word is one line with close matches, and exit
    status 1. --like and --unit load the index's own model (or --model, ...) for a photo
    outside the index and for the unit's box.

    \b
    Examples:
      convscope search photos.index dog
      convscope search photos.index beach july
      convscope search photos.index dog france 2015 --json
      convscope search photos.index "sports car" --top 5 --sort date --json
      convscope search photos.index --like photos/rex.jpg
      convscope search photos.index --unit blocks.4:17 --explain why/
    """
    from ..index import Index, parse_unit

    text = " ".join(query).strip()
    asked = [name for name, given in (("QUERY", text), ("--like", like), ("--unit", unit)) if given]
    if len(asked) != 1:
        raise click.UsageError("give one of QUERY (a word or phrase), --like FILE or --unit LAYER:UNIT"
                               + (f", not {' and '.join(asked)}" if asked else ""))
    if text and not re.search(r"\w", text):
        raise click.UsageError(f"the query {text!r} holds no word; give one such as dog")
    ctx = click.get_current_context()
    for flag in ("--min-score", "--sort") if not text else ():
        if ctx.get_parameter_source(flag[2:].replace("-", "_")) == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(f"{flag} is for a keyword QUERY; {asked[0]} results come by similarity, best first")
    unit = parse_unit(unit) if unit is not None else None
    with Index.open(index_dir) as idx:
        if unit is not None:
            idx.check_unit(*unit)  # an unknown layer or a unit out of range fails before a model loads
        if not idx.entries:
            if text:
                idx.search(text, top=top, min_score=min_score, sort=sort, words=words_file)  # a word it does not know still fails
            note(_empty(idx))
            return
        model = None
        if model_args.names_a_model:  # not the index's own model as it was built
            model = model_args.load(idx.meta["model"]["spec"])
        if text:  # a word the search does not know is a QueryError: exit 1, as for nothing found
            results = idx.search(text, top=top, min_score=min_score, sort=sort, words=words_file)
        elif like is not None:
            results = idx.like(like, top=top, model=model)
        else:
            results = idx.unit(*unit, top=top, model=model)
        written = idx.explain(results, explain_dir, model=model) if explain_dir is not None and results else []
    if as_json:
        for r in results:
            emit(r.to_json())
    elif results:
        _print_table(results)
    if not results:
        note(f"nothing reached --min-score {min_score:g}" if text else "the index holds no other photo")
    if written:
        click.echo(f"wrote {len(written)} pictures to {printable_path(explain_dir)}", err=True)


def _empty(idx) -> str:
    """The note for an index that holds nothing (each of its inputs skipped, or none given), and
    the command that adds photos to it."""
    skipped = idx.info()["skipped"]
    why = f" (its build skipped {skipped} file{'s' * (skipped != 1)})" if skipped else ""
    return (f"the index in {printable_path(idx.root)} is empty{why}; add photos and videos with "
            f"`convscope index PATHS --out {shlex.quote(printable_path(idx.root))} --update`")


def _when(r) -> str:
    if r.time is None:
        return ""
    return f"{r.time:g} s" if r.end is None else f"{r.time:g}-{r.end:g} s"


def _why(r) -> str:
    if r.box is not None:
        top, left, bottom, right = r.box
        return f"at y={r.position[0]} x={r.position[1]}, input box rows {top}-{bottom - 1}, cols {left}-{right - 1}"
    return "; ".join(w.line() for w in r.why)


def _print_table(results) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    table.add_column("score", justify="right")
    table.add_column("path", overflow="fold")
    videos = any(r.time is not None for r in results)
    if videos:
        table.add_column("time", justify="right")
    why = any(r.why or r.box is not None for r in results)
    if why:
        table.add_column("why", overflow="fold")
    for r in results:
        row = [f"{r.score:.3f}", printable_path(r.path)] + ([_when(r)] if videos else []) + ([_why(r)] if why else [])
        table.add_row(*row)
    Console(width=max(100, Console().width)).print(table)


@click.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help='One JSON record per group: {"kind": "copies"|"similar", "paths": [...], "pairs": [...], "threshold": {...}}.')
def duplicates(index_dir, as_json):
    """Groups of duplicate files in an index, two kinds apart: copies (the same photo resized,
    recompressed, cropped, mirrored or re-encoded, or the same bytes: the perceptual hash and
    the embedding agree) and similar photos (the same subject or moment: the embedding alone).
    Every pair of a group passes its threshold, shown as it is applied.

    \b
    Example:
      convscope duplicates photos.index --json
    """
    from ..index import Index
    from ..index.duplicates import rule

    with Index.open(index_dir) as idx:
        if not idx.entries:
            return note(_empty(idx))
        groups = idx.duplicates(on_note=note)
    for n, group in enumerate(groups, 1):
        if as_json:
            emit(group)
            continue
        click.echo(f"group {n}: {group['kind']}, {len(group['paths'])} files (every pair: {rule(group)})")
        for path in group["paths"]:
            click.echo(f"  {printable_path(path)}")
    if not groups:
        note("no duplicates")


@click.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help='One JSON record per album: {"album", "kind", "paths", "covers", "why"}.')
def organize(index_dir, as_json):
    """Albums of an index's files: by WordNet category at a readable depth ("animals > dogs",
    "food", "vehicles > cars"); what no category holds, by taught concept ("concept: NAME"), by
    clusters of the embeddings ("similar: <its most common class>"), by place ("places >
    France > Lyon") or by the month it was taken ("times > 2015 > May"); the rest in "other".
    Every file is in one album (a concept's album also lists the files of others it holds);
    each album opens with its covers, its most typical files.

    \b
    Example:
      convscope organize photos.index
    """
    from ..index import Index

    with Index.open(index_dir) as idx:
        if not idx.entries:
            return note(_empty(idx))
        albums = idx.albums()
    for album in albums:
        if as_json:
            emit({key: album[key] for key in ("album", "kind", "paths", "covers", "why")})
            continue
        click.echo(f"{album['album']} ({len(album['paths'])}, {album['kind']}; covers: {album['why']})")
        covers = set(album["covers"])
        for path in [*album["covers"], *(p for p in album["paths"] if p not in covers)]:
            click.echo(f"  {printable_path(path)}")
