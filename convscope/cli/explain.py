"""`convscope explain` (one image: occlusion, Grad-CAM, guided Grad-CAM, saliency, activations)
and `convscope invariance` (feature distances under translation, scale, rotation)."""
from __future__ import annotations

from pathlib import Path

import click

from ..choices import EXPLAIN_METHODS, TRANSFORMS
from ._common import LAYERS, emit, model_options, renamed


@click.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--method", "methods", multiple=True, required=True, type=click.Choice(EXPLAIN_METHODS),
              help="What to compute; repeat for several.")
@click.option("--target", default="top", show_default=True, metavar="CLASS|top", help="Class index to explain, or the top prediction.")
@click.option("--layers", type=LAYERS, default=None,
              help="Layers (dotted names) for occlusion (b, c), Grad-CAM and activations, each in its own "
                   "subfolder of --out when there are several; default: the last conv stage (the deepest "
                   "default layer with a map over 1x1: bn2 for the default model).")
@renamed("--layer", "--layers", type=LAYERS)
@click.option("--window", default=48, show_default=True, type=click.IntRange(1), metavar="PIXELS", help="Occlusion square side, model-input pixels.")
@click.option("--stride", default=16, show_default=True, type=click.IntRange(1), metavar="PIXELS", help="Occlusion step, model-input pixels.")
@click.option("--batch-size", default=None, type=click.IntRange(1, 4096), help="Occluded copies per forward pass (default: memory-bounded).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the figures (and arrays).")
@click.option("--npy", is_flag=True, help="Also write the raw arrays (.npy).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per layer: top predictions, summaries, files written.")
@model_options
def explain(image, methods, target, layers, window, stride, batch_size, out_dir, npy, as_json, model_args):
    """Explain one image: which parts of it the prediction depends on.

    \b
    Methods (one PNG each in --out):
      occlusion       grey square slid over the image (Zeiler & Fergus fig. 7): total activation
                      of the strongest map of the layer, its deconvnet projection (guided
                      backprop where the deconvnet cannot depend on the image, as in the atlas),
                      probability of the target, most probable class, against the square's position
      gradcam         Grad-CAM at the layer over the image
      guided-gradcam  guided backprop times the upsampled Grad-CAM
      saliency        input gradient of the target logit, max |.| over colour channels
      activations     every channel of the layer, tiled
    With --npy: occlusion_activation.npy, occlusion_probability.npy, occlusion_top_class.npy,
    gradcam.npy (layer resolution), guided_gradcam.npy (3xHxW), saliency.npy (HxW),
    activations.npy (CxHxW).

    \b
    Examples:
      convscope explain cat.jpg --method occlusion --out out/
      convscope explain cat.jpg --method gradcam --method guided-gradcam --target 281 --out out/ --npy --json
    """
    from ..data import load_image
    from ..explain import explain as run_method

    picture = load_image(image)
    model = model_args.load()
    for layer in layers or [None]:
        folder = Path(out_dir) / layer if layers and len(layers) > 1 else Path(out_dir)
        files: list[str] = []
        result = None
        summaries = {}
        for method in methods:
            options = {"window": window, "stride": stride, "batch_size": batch_size} if method == "occlusion" else {}
            result = run_method(model, picture, method, target=target, layer=layer, **options)
            result.image_name = click.format_filename(image, shorten=True)
            written = result.save(folder, npy=npy)
            files += written
            summaries[method] = {k: v for k, v in result.summary().items() if k not in ("top", "target", "target_label")}
            if not as_json:
                for f in written:
                    click.echo(f"wrote {f}")
        if as_json:
            emit({
                "image": image,
                "model": model.spec,
                "layer": layer,
                "target": result.target,
                "target_label": result.target_label,
                "top": result.top,
                "methods": summaries,
                "files": files,
            })
        else:
            best = result.top[0]
            click.echo(f"top: {best['label']} ({best['class']}) p={best['probability']:.3f}; "
                       f"explained: {result.target_label} ({result.target})")


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--transform", required=True, type=click.Choice(TRANSFORMS),
              help="translate (vertical, pixels), scale (factor) or rotate (degrees).")
@click.option("--amounts", default=None, metavar="A,B,...", help="Amounts to try (default: the transform's documented range).")
@click.option("--layers", type=LAYERS, default=None, help="Layers; distances at the first and last (default: the catalogue's default layers).")
@click.option("--target", default="top", show_default=True, metavar="CLASS|top", help="Class whose probability is plotted (top: each image's own top class).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the plot and the CSV.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record: transform, layers, images, targets, files written.")
@model_options
def invariance(images, transform, amounts, layers, target, out_dir, as_json, model_args):
    """How features and the prediction change as images are transformed (Zeiler & Fergus fig. 5).

    Writes invariance_<transform>.png (feature distance at the first and last layer, and the
    target probability, against the amount) and invariance_<transform>.csv.

    \b
    Example:
      convscope invariance cat.jpg dog.jpg --transform rotate --out out/
    """
    from ..explain import invariance as run_invariance

    values = None
    if amounts is not None:
        try:
            values = [float(v) for v in amounts.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"amounts must be numbers separated by commas, got {amounts!r}", param_hint="--amounts") from None
    model = model_args.load()
    result = run_invariance(model, list(images), transform=transform, amounts=values, layers=layers, target=target)
    files = result.save(out_dir)
    if as_json:
        emit({"transform": transform, "layers": result.layers, "images": result.images,
              "targets": result.targets, "files": files})
    else:
        for f in files:
            click.echo(f"wrote {f}")
