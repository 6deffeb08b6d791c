"""`convscope serve`, `convscope export` and `convscope demo`: the gallery, live or as files."""
from __future__ import annotations

import click

from ._common import main


def _run_server(app, host: str, port: int) -> None:
    import uvicorn

    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    click.echo(f"serving the gallery at {where}  (Ctrl+C to stop)", err=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"note: listening on {host}, so other machines can reach this gallery", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@main.command()
@click.argument("atlas", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-upload-mb", default=12, show_default=True, type=click.IntRange(1, 1024), help="Largest photo upload.")
def serve(atlas, host, port, max_upload_mb):
    """Browse an atlas in a web browser: layers, units, top patches, projections, feature
    visualizations; upload a photo to see what the model makes of it.

    \b
    Example:
      convscope serve atlas/ --port 8000
    """
    from ..web import create_app

    app = create_app(atlas, max_upload_bytes=max_upload_mb * 1024 * 1024)
    _run_server(app, host, port)


@main.command()
@click.argument("atlas", type=click.Path(file_okay=False))
@click.option("--static", "out", required=True, type=click.Path(file_okay=False), help="Folder to write the site into.")
def export(atlas, out):
    """Write the gallery of an atlas as static files (every page, its JSON, the images) that
    any web server can host, or a browser can open from disk. The upload page is left out.

    \b
    Example:
      convscope export atlas/ --static site/ && python -m http.server -d site
    """
    from ..web import export_static

    counts = export_static(atlas, out)
    click.echo(
        f"wrote {counts['pages']} pages, {counts['json']} JSON files, {counts['images']} atlas images and "
        f"{counts['sources']} source photos to {out}/ (open {out}/index.html)",
        err=True,
    )
    if counts["missing_sources"]:
        click.echo(f"note: {counts['missing_sources']} source photos were no longer on disk", err=True)


@main.command()
@click.option("--images", "images", multiple=True, type=click.Path(exists=True),
              help="Also scan this folder (or file); repeatable.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Atlas folder (default: the convscope cache's demo-atlas).")
@click.option("--no-serve", is_flag=True, help="Build (or check) the atlas, then exit.")
@click.option("--rebuild", is_flag=True, help="Build again even if the atlas is up to date.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
def demo(images, out, no_serve, rebuild, host, port):
    """Build an atlas of the default model over scikit-image's sample photos (plus --images),
    with deconvnet and guided projections and feature visualizations for a subset of units,
    then open the gallery. A second run reuses the atlas while its inputs are unchanged.

    \b
    Examples:
      convscope demo
      convscope demo --images my_photos/ --out my-demo/ --no-serve
    """
    from ..web.demo import ensure_demo_atlas

    atlas_dir = ensure_demo_atlas(out, images, rebuild=rebuild, echo=lambda line: click.echo(line, err=True))
    if no_serve:
        click.echo(f"atlas ready in {atlas_dir}; browse it with `convscope serve {atlas_dir}`", err=True)
        return
    from ..web import create_app

    _run_server(create_app(atlas_dir), host, port)
