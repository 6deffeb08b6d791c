"""`convscope teach | concepts`: concepts a person teaches an index from a few example photos
(``docs/concepts.md``)."""
from __future__ import annotations

import click

from ..errors import ArgumentError
from ..files import printable_path
from ._common import emit, model_options, note


@click.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False))
@click.argument("name")
@click.argument("examples", nargs=-1, metavar="EXAMPLE...")
@click.option("--not", "counter", multiple=True, metavar="EXAMPLE",
              help="A counter-example: a photo that is not NAME though it looks alike (repeat the option).")
@click.option("--forget", is_flag=True, help="Remove the concept NAME instead.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON record for the concept: {"concept", "taught", "threshold", "separation", "background", '
                   '"examples", "counter_examples"}.')
@model_options(own="index")
def teach(index_dir, name, examples, counter, forget, as_json, model_args):
    """Teach the index a concept NAME ("rex", "our kitchen", "receipts") from example photos:
    files in the index, or any photos (run through the index's own model). With only examples,
    the rest of the index is the background; --not adds counter-examples. Teaching NAME again
    adds to what it holds. `convscope search INDEX NAME` then finds the photos it fits.

    \b
    Examples:
      convscope teach photos.index rex photos/rex1.jpg photos/rex2.jpg photos/rex3.jpg
      convscope teach photos.index rex --not photos/max.jpg
      convscope teach photos.index rex --forget
    """
    from ..index import Index, concepts

    if forget:
        if examples or counter:
            raise ArgumentError("--forget removes the concept; give no EXAMPLE or --not with it")
        with Index.open(index_dir) as idx:
            gone = concepts.forget(idx, name)
        note(f"forgot concept {gone.name!r} ({len(gone.positives())} examples)")
        return
    if not examples and not counter:
        raise ArgumentError("give at least one EXAMPLE photo of the concept (or --not EXAMPLE to refine one)")
    concepts.check_name(name)  # before a model loads
    with Index.open(index_dir) as idx:
        model = model_args.load(idx.meta["model"]["spec"]) if model_args.names_a_model else None
        concept = concepts.teach(idx, name, examples, counter, model=model)
    if as_json:
        emit(concept.to_json())
        return
    sep = "needs two examples to be measured" if concept.separation is None else f"separation {concept.separation:.3f}"
    click.echo(f"taught {concept.name!r}: {len(concept.positives())} examples, {len(concept.counters())} counter-examples, "
               f"{concept.background} background photos; {sep}")


@click.command("concepts")
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help='One JSON record per concept: {"concept", "taught", "threshold", "separation", "background", '
                   '"examples", "counter_examples"}.')
def concepts_(index_dir, as_json):
    """The concepts taught to an index: their examples, when they were taught, and how well
    they separate (the chance that an example left out of the teaching outranks a background
    photo).

    \b
    Example:
      convscope concepts photos.index
    """
    from ..index import Index, concepts

    with Index.open(index_dir) as idx:
        held = list(concepts.load(idx))
    for c in held:
        if as_json:
            emit(c.to_json())
            continue
        sep = "-" if c.separation is None else f"{c.separation:.3f}"
        click.echo(f"{c.name}: {len(c.positives())} examples, {len(c.counters())} counter-examples, "
                   f"separation {sep}, taught {c.taught}")
        for e in c.examples:
            click.echo(f"  {'not ' if e.kind == 'counter' else ''}{printable_path(e.path)}")
    if not held:
        note(f"no concepts yet; teach one with `convscope teach {printable_path(index_dir)} NAME EXAMPLE...`")
