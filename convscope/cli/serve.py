"""`convscope serve`, `convscope export` and `convscope demo`: the gallery, live or as files."""
from __future__ import annotations

import click

from ._common import emit, model_options, renamed


def _secret(host: str, password_file: str | None):
    """What the gallery asks for: the password file's, else beyond loopback a token made now,
    else nothing. Read before any model loads (a bad file is one line at once)."""
    from ..web.security import Secret, is_loopback

    if password_file is not None:
        return Secret.from_file(password_file)
    return None if is_loopback(host) else Secret.generate()


def _run_server(app, host: str, port: int) -> None:
    from ..web import serve as run
    from ..web.security import is_loopback

    secret = app.state.login.secret  # the app's (create_app(secret=...)), as _secret chose it
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    click.echo(f"serving the gallery at {where}  (Ctrl+C to stop)", err=True)
    if not is_loopback(host):
        click.echo(f"note: listening on {host}, so other machines can reach this gallery; it asks for a secret",
                   err=True)
    if secret is not None and secret.token:
        click.echo(f"sign in once by opening {where}?token={secret.token}  (a cookie keeps it; or give the token "
                   f"at {where}login)", err=True)
    elif secret is not None:
        click.echo(f"sign in at {where}login with the password in {secret.source}", err=True)
    run(app, host=host, port=port)  # request deadlines, a connection cap, memory handed back when idle


def allow_host_option(fn):
    fn = click.option(
        "--password-file", default=None, type=click.Path(dir_okay=False), metavar="FILE",
        help="Ask every visitor for the password on this file's first line (at /login; a cookie keeps it). "
             "Bound beyond loopback (--host 0.0.0.0) the gallery always asks for a secret: without this, a "
             "token printed at start. Give it on loopback too behind a reverse proxy.",
    )(fn)
    return click.option(
        "--allow-host", "allow_hosts", multiple=True, metavar="HOST",
        help="Another host name the gallery answers to (repeatable; * for any, behind a proxy that checks "
             "names). It always answers to localhost, its loopback and bound addresses.",
    )(fn)


def _built_with(atlas_dir) -> str | None:
    from ..atlas import Atlas

    with Atlas.open(atlas_dir, building=True) as a:  # a build in progress is served from its snapshot
        return (a.info()["model"] or {}).get("spec")


def _check_model(atlas_dir, spec: str | None) -> str | None:
    """The atlas's model spec; a usage error when ``spec`` is given and is another one."""
    built = _built_with(atlas_dir)
    if spec is not None and built is not None and spec != built:
        raise click.BadParameter(
            f"the atlas {atlas_dir} was built with {built!r}, not {spec!r} (other weights of it: --weights FILE)",
            param_hint="--model",
        )
    return built


@click.command()
@click.argument("atlas", required=False, type=click.Path(file_okay=False))
@click.option("--index", "index_dir", default=None, type=click.Path(file_okay=False), metavar="INDEX",
              help="Also search this index (`convscope index`) in the browser: a search box on every page, results "
                   "with why and Grad-CAM, duplicates and albums. Without ATLAS the search page is the home page.")
@click.option("--watch", is_flag=True,
              help="With --index: keep the index up to date while serving (photos added, changed or deleted in its "
                   "folders are searchable seconds later; the search page lists what was added).")
@click.option("--evolve", "evolve_dir", default=None, type=click.Path(exists=True, file_okay=False), metavar="RUN",
              help="Also show this evolve run (`convscope evolve ... --out RUN`): units across its checkpoints at /evolve.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-upload-mb", default=12, show_default=True, type=click.IntRange(1, 1024), help="Largest photo upload.")
@click.option("--no-fill", is_flag=True, help="Do not compute the projections and feature visualizations a unit page lacks "
                                              "(they are written into the atlas; use this for a read-only atlas).")
@allow_host_option
@model_options(own="atlas")
def serve(atlas, index_dir, watch, evolve_dir, host, port, max_upload_mb, no_fill, allow_hosts, password_file, model_args):
    """Browse an atlas in a web browser: layers, units, top patches, projections, feature
    visualizations; upload a photo to see what the model makes of it (the atlas's own model,
    loaded on the first upload, unless --model, --weights, --no-pretrained or --device say
    otherwise). With --index, search photos by word, by example and by unit, and see their
    duplicates and albums; the pictures of why use the index's own model (or --model, ..., when
    that is the index's model). Only files inside the folders the index was built from are
    served. A unit page whose projections or feature visualization the atlas lacks has them
    computed by the model and written into the atlas (--no-fill: not); an atlas whose patches
    are cut on demand (or one still building) has the rest cut in the background once it is
    finished, layer by layer, the units pages ask for first. With an atlas,
    /health shows the model's health; with --evolve, /evolve an evolve run.

    \b
    Examples:
      convscope serve atlas/ --port 8000
      convscope serve atlas/ --index photos.index
      convscope serve --index photos.index
      convscope serve --index photos.index --watch
      convscope serve atlas/ --evolve evolve-run/
      convscope serve atlas/ --host 0.0.0.0 --allow-host gallery.example.org
      convscope serve --index photos.index --host 0.0.0.0 --password-file ~/.gallery-password
    """
    from ..web import create_app

    if watch and index_dir is None:
        raise click.UsageError("--watch keeps an index up to date: give --index INDEX")
    if atlas is None and index_dir is None and evolve_dir is None:
        raise click.UsageError("give an ATLAS folder, --index INDEX, --evolve RUN, or some of them")
    secret = _secret(host, password_file)
    index = None
    if index_dir is not None:
        from ..index import Index
        from ..index.build import check_out

        if watch:
            check_out(index_dir, update=True, resume=True)  # another writer there: one line

        index = Index.open(index_dir)  # a missing or unfinished index is one line, before any model loads
    model = None
    if model_args.names_a_model:  # not the atlas's (or the index's) own model as it was built
        own = _check_model(atlas, model_args.spec) if atlas is not None else index.meta["model"]["spec"]
        model = model_args.load(own)
    app = create_app(atlas, model, index=index, pages=page_groups(evolve_dir),
                     max_upload_bytes=max_upload_mb * 1024 * 1024, allowed_hosts=allow_hosts, fill=not no_fill,
                     secret=secret, watch=2.0 if watch else None,
                     on_note=lambda line: click.echo(line, err=True))
    if atlas is not None and not no_fill:
        from ..web.fill_pages import cut_in_background

        # an atlas whose patches are cut on demand (or still building): the patches no page asked
        # for are cut behind the pages' own requests, layer by layer, once the atlas is finished
        cut_in_background(app)
    _run_server(app, host, port)


def page_groups(evolve_dir) -> list:
    """The page groups ``serve`` adds to the app's own: the evolve run's (``--evolve``)."""
    from ..web.evolve_pages import EvolvePages

    return [] if evolve_dir is None else [lambda site: EvolvePages(site, evolve_dir)]


@click.command()
@click.argument("atlas", type=click.Path(file_okay=False))
@click.option("--out", "out", default=None, type=click.Path(file_okay=False), help="Folder to write the site into. Required.")
@renamed("--static", "--out", required=True, type=click.Path(file_okay=False))
@click.option("--model", "model_spec", default=None, metavar="SPEC",
              help="Check that the atlas was built with this model (exports need no model).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record: out, pages, json, images, sources, missing_sources.")
def export(atlas, out, model_spec, as_json):
    """Write the gallery of an atlas as static files (every page, its JSON, the images) that
    any web server can host, or a browser can open from disk. The upload page is left out.

    \b
    Example:
      convscope export atlas/ --out site/ && python -m http.server -d site
    """
    from ..web import export_static

    if model_spec is not None:
        _check_model(atlas, model_spec)
    counts = export_static(atlas, out)
    if as_json:
        emit({"out": str(out), **counts})
    click.echo(
        f"wrote {counts['pages']} pages, {counts['json']} JSON files, {counts['images']} atlas images and "
        f"{counts['sources']} source photos to {out}/ (open {out}/index.html)",
        err=True,
    )
    if counts["missing_sources"]:
        click.echo(f"note: {counts['missing_sources']} source photos were no longer on disk", err=True)


@click.command()
@click.option("--images", "images", multiple=True, type=click.Path(exists=True),
              help="Also scan and index this folder (or file); repeatable.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Atlas folder, with the index in its index/ (default: the convscope cache's demo-atlas).")
@click.option("--no-serve", is_flag=True, help="Build (or check) the atlas and the index, then exit.")
@click.option("--rebuild", is_flag=True, help="Build again even if the atlas and the index are up to date.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@allow_host_option
@model_options(own="atlas", weights=False, device=False)
def demo(images, out, no_serve, rebuild, host, port, allow_hosts, password_file, model_args):
    """Build an atlas of the default model (or --model, over its default layers) over
    scikit-image's sample photos (plus --images) and an index of the same photos; then open
    the gallery, with a search box on every page, whose uploads and pictures of why use the
    same model. The gallery opens within seconds and grows while the atlas builds (pages say
    how many photos are scanned): each unit's patches, projections and feature visualization
    are computed when its page is first opened, and kept in the atlas; once the atlas and the
    index are built, the patches no page asked for are cut behind the pages, layer by layer.
    --no-serve builds them up front instead (guided projections, and deconvnet ones where
    they depend on the image, of each unit's top 3 examples; feature visualizations of 8
    units per layer). A second run reuses both while their inputs are unchanged (photos
    added to an --images folder are indexed then).

    \b
    Examples:
      convscope demo
      convscope demo --images my_photos/ --out my-demo/ --no-serve
      convscope demo --model torchvision:resnet18 --out resnet-demo/
    """
    from ..web import demo as recipes

    secret = None if no_serve else _secret(host, password_file)
    recipe = None
    if model_args.spec is not None or not model_args.pretrained:
        recipe = dict(recipes.RECIPE, pretrained=model_args.pretrained)
        if model_args.spec not in (None, recipe["model"]):
            # the recipe's layers are the default model's: take the other model's default selection
            recipe.update(model=model_args.spec, layers=model_args.load().layers.default)
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    if no_serve:
        atlas_dir = recipes.ensure_demo_atlas(out, images, rebuild=rebuild, recipe=recipe, echo=echo)
        index_dir = recipes.ensure_demo_index(atlas_dir, images, rebuild=rebuild, recipe=recipe, echo=echo)
        click.echo(f"atlas and index ready in {atlas_dir}; browse and search them with "
                   f"`convscope serve {atlas_dir} --index {index_dir}`", err=True)
        return
    from ..web import create_app
    from ..web.fill_pages import cut_in_background

    # serving: the build goes on on a thread; the gallery opens on its first snapshot and grows,
    # each unit's pictures computed when its page is opened
    building = recipes.DemoBuild(out, images, rebuild=rebuild, recipe=recipe, echo=echo)
    atlas_dir = building.wait_servable()
    echo(f"the gallery is open at http://{host}:{port}/ (the atlas grows while the build runs; "
         "search answers from the first photos indexed)")
    app = create_app(atlas_dir, index=building.servable_index(), pages=page_groups(None),
                     allowed_hosts=allow_hosts, fill=recipes.fill_settings(recipe), secret=secret)
    building.follow(app)  # the index's snapshots as its build goes on, then the finished index
    # then the patches no page asked for yet, layer by layer, behind the pages' own requests
    building.when_indexed(lambda folder: cut_in_background(app))
    _run_server(app, host, port)
