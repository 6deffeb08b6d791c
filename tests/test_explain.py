"""convscope.explain: occlusion against a plain loop, Grad-CAM and guided backprop against
pytorch-grad-cam, saliency against captum, hook hygiene, the CLI's files and errors, and one
check with the real default model."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from convscope import load_model
from convscope.explain import (
    METHODS,
    OcclusionSplitWarning,
    activations,
    gradcam,
    guided_gradcam,
    invariance,
    occlusion,
    saliency,
)
from convscope.hooks import hook_count


@pytest.fixture(scope="module")
def resnet():
    return load_model("torchvision:resnet18", pretrained=False, device="cpu")


@pytest.fixture(scope="module")
def vgg():
    return load_model("torchvision:vgg11", pretrained=False, device="cpu")


def _input(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, size, size, generator=g)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_untouched(module, before, x):
    assert hook_count(module) == 0
    after = module.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in module.parameters())
    assert all(p.requires_grad for p in module.parameters())
    assert not module.training


# --------------------------------------------------------------------------- occlusion


def _plain_occlusion(module, x, layer, window, stride):
    """The obvious way: every occluded copy built by hand (in one batch), the layer read with a
    forward hook. Returns probabilities (ny, nx, classes), totals (ny, nx), channel, logits."""
    H, W = x.shape[2:]
    ys = [i * stride for i in range(-(-(H - window) // stride) + 1)]  # ceil((H - w) / s) + 1, as captum
    xs = [i * stride for i in range(-(-(W - window) // stride) + 1)]
    got = {}
    handle = dict(module.named_modules())[layer].register_forward_hook(lambda m, i, o: got.__setitem__("a", o))
    try:
        with torch.no_grad():
            logits0 = module(x)
            channel = int(got["a"][0].flatten(1).max(1).values.argmax())
            copies = []
            for y in ys:
                for xx in xs:
                    occluded = x.clone()
                    occluded[:, :, y:y + window, xx:xx + window] = 0.0
                    copies.append(occluded)
            probs = torch.softmax(module(torch.cat(copies)), 1).numpy().reshape(len(ys), len(xs), -1)
            totals = got["a"][:, channel].sum((1, 2)).numpy().reshape(len(ys), len(xs))
    finally:
        handle.remove()
    return probs, totals, channel, logits0


@pytest.fixture(scope="module")
def plain64(resnet):
    x = _input(64)
    return x, _plain_occlusion(resnet.module, x, "layer3", 16, 8)


@pytest.mark.parametrize("split", ["auto", None, "layer1"])
def test_occlusion_equals_plain_loop(resnet, plain64, split):
    x, (probs, totals, channel, logits0) = plain64
    before = _state(resnet.module)
    r = occlusion(resnet, x, target=7, layer="layer3", window=16, stride=8, split=split)
    assert r.probability.shape == (7, 7) and r.ys == list(range(0, 49, 8))
    assert r.channel == channel
    if split == "layer1":
        assert r.split == "layer1"  # the split path really ran (and passed its own check)
    np.testing.assert_allclose(r.probability, probs[..., 7], atol=2e-5)
    np.testing.assert_allclose(r.probabilities, probs, atol=2e-5)
    np.testing.assert_allclose(r.activation, totals, rtol=1e-4, atol=1e-3)
    assert (r.top_class == probs.argmax(-1)).mean() > 0.95  # near-ties may flip
    assert r.base_probability == pytest.approx(float(torch.softmax(logits0, 1)[0, 7]), abs=1e-5)
    assert r.projection.shape == (64, 64, 3) and r.projection.dtype == np.uint8
    assert r.projection_method == "deconvnet" and r.projection_note is None  # ResNet's stem max-pool routes it
    _assert_untouched(resnet.module, before, x)


def test_occlusion_clipped_last_square_and_bad_split_falls_back(resnet):
    # 60 px, window 16, stride 12: positions 0, 12, 24, 36, 48 (the last square clipped to 12 px)
    x = _input(60, seed=1)
    probs, totals, _, _ = _plain_occlusion(resnet.module, x, "layer2", 16, 12)
    assert probs.shape[:2] == (5, 5)
    # a split inside a residual block: the skip connection around it cannot take a crop
    with pytest.warns(OcclusionSplitWarning):
        r = occlusion(resnet, x, target=3, layer="layer2", window=16, stride=12, split="layer1.0.conv1", batch_size=7)
    assert r.split is None and r.notes
    np.testing.assert_allclose(r.probabilities, probs, atol=2e-5)
    np.testing.assert_allclose(r.activation, totals, rtol=1e-4, atol=1e-3)
    r2 = occlusion(resnet, x, target=3, layer="layer2", window=16, stride=12, split="relu", batch_size=4)
    assert r2.split == "relu"
    np.testing.assert_allclose(r2.probabilities, probs, atol=2e-5)


# --------------------------------------------------------------------------- Grad-CAM


def _reference_cam(module, x, layer, target):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ref = copy.deepcopy(module)
    with GradCAM(model=ref, target_layers=[ref.get_submodule(layer)]) as cam:
        return cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(target)])[0]


@pytest.mark.parametrize("spec,layer", [("resnet", None), ("resnet", "layer2"), ("vgg", None)])
def test_gradcam_equals_pytorch_grad_cam(request, spec, layer):
    model = request.getfixturevalue(spec)
    x = _input(96, seed=2)
    before = _state(model.module)
    r = gradcam(model, x, target=5, layer=layer)
    default = {"resnet": "layer4", "vgg": "features"}[spec]
    assert r.layer == (layer or default)
    ref = _reference_cam(model.module, x, r.layer, 5)
    assert ref.shape == r.heatmap.shape == (96, 96)
    # layer2's maximum is inside the map, where upsampling lowers it: both renormalize after
    assert r.cam.shape == {"layer4": (3, 3), "layer2": (12, 12), "features": (3, 3)}[r.layer]
    assert np.ptp(r.heatmap) > 0.5  # not a constant map: the comparison means something
    np.testing.assert_allclose(r.heatmap, ref, atol=1e-4)
    _assert_untouched(model.module, before, x)


def test_guided_gradcam_is_guided_backprop_times_cam(resnet):
    from pytorch_grad_cam import GuidedBackpropReLUModel

    x = _input(64, seed=3)
    before = _state(resnet.module)
    r = guided_gradcam(resnet, x, target=11)
    # pytorch-grad-cam's guided backprop swaps the ReLU modules; give it a copy
    ref_gb = GuidedBackpropReLUModel(copy.deepcopy(resnet.module), device="cpu")(x.clone(), target_category=11)
    ref_gb = ref_gb.transpose(2, 0, 1)
    scale = np.abs(ref_gb).max()
    assert scale > 0
    np.testing.assert_allclose(r.backprop, ref_gb, atol=1e-5 * scale)
    ref_cam = _reference_cam(resnet.module, x, "layer4", 11)
    np.testing.assert_allclose(r.guided, ref_gb * ref_cam[None], atol=1e-4 * scale)
    np.testing.assert_array_equal(r.guided, r.backprop * r.heatmap[None])
    _assert_untouched(resnet.module, before, x)


def test_saliency_equals_captum(resnet):
    from captum.attr import Saliency as CaptumSaliency

    x = _input(64, seed=4)
    r = saliency(resnet, x, target=2)
    ref = CaptumSaliency(copy.deepcopy(resnet.module)).attribute(x.clone().requires_grad_(), target=2, abs=True)
    np.testing.assert_allclose(r.saliency, ref[0].max(0).values.numpy(), rtol=1e-5, atol=1e-7)
    assert r.saliency.shape == (64, 64)


def test_activations_are_the_layer_output(resnet):
    x = _input(64, seed=5)
    r = activations(resnet, x, layer="layer2")
    # independent of hooks: torchvision's ResNet.forward up to layer2, its submodules called by hand
    m = resnet.module
    with torch.no_grad():
        ref = m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))[0].numpy()
    assert r.activations.shape == (128, 8, 8)
    np.testing.assert_allclose(r.activations, ref, rtol=1e-6)
    mosaic = r.mosaic()
    assert mosaic.shape == (11 * 9 - 1, 12 * 9 - 1)  # 128 channels of 8x8: 12 columns, 11 rows
    assert r._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- hygiene


class _Boom(Exception):
    pass


@pytest.mark.parametrize("method,fail_at", [
    ("occlusion", 2),  # the one occluded batch (split=None: call 1 is the unoccluded pass)
    ("occlusion", 3),  # the deconvnet projection, inside backproject's rule context
    ("gradcam", 1), ("guided-gradcam", 2), ("saliency", 1), ("activations", 1),
])
def test_no_hook_remains_after_an_error(resnet, method, fail_at):
    x = _input(64, seed=6)
    _ = resnet.layers.names  # build the catalogue (it runs the model) before counting calls
    before = _state(resnet.module)
    ref = resnet.module(x).detach()
    calls = {"n": 0}

    def explode(_m, _i, _o):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise _Boom("injected")

    handle = resnet.module.layer3.register_forward_hook(explode)
    try:
        options = {"window": 32, "stride": 32, "split": None, "batch_size": 4} if method == "occlusion" else {}
        with pytest.raises(_Boom):
            METHODS[method](resnet, x, target=1, layer="layer4", **options)
    finally:
        handle.remove()
    _assert_untouched(resnet.module, before, x)
    assert torch.equal(resnet.module(x).detach(), ref)


def test_model_lock_keeps_another_threads_explanation_out_of_a_capture(resnet):
    """hooks.model_lock: one re-entrant lock per module, held by capture for its whole block;
    an explanation in another thread waits for it, then gives what it gives alone."""
    import threading

    from convscope.hooks import capture, model_lock, run

    m = resnet.module
    assert model_lock(m) is model_lock(m) and model_lock(m) is not model_lock(m.layer1)
    x = _input(64, seed=8)
    alone = gradcam(resnet, x, target=1).cam
    out: dict = {}
    started, done = threading.Event(), threading.Event()

    def other():
        started.set()
        out["cam"] = gradcam(resnet, x, target=1).cam
        done.set()

    with capture(m, ["layer1"], stop=True) as outs:
        probe = threading.Thread(target=lambda: out.setdefault("free", model_lock(m).acquire(blocking=False)))
        probe.start()
        probe.join()
        assert out["free"] is False  # held by this thread's capture
        with model_lock(m):  # re-entrant: the holder may take it again
            pass
        worker = threading.Thread(target=other)
        worker.start()
        started.wait()
        assert not done.wait(0.3)  # Grad-CAM waits while this thread's hooks are on
        run(m, x, outs)
        assert set(outs) == {"layer1"}
    worker.join(120)
    assert done.is_set() and np.array_equal(out["cam"], alone)
    assert hook_count(m) == 0


def test_results_save_documented_files(resnet, tmp_path):
    x = _input(64, seed=7)
    r = occlusion(resnet, x, target=0, window=32, stride=16)
    files = r.save(tmp_path, npy=True)
    names = sorted(p.split("/")[-1] for p in files)
    assert names == ["occlusion.png", "occlusion_activation.npy", "occlusion_probability.npy", "occlusion_top_class.npy"]
    assert np.load(tmp_path / "occlusion_top_class.npy").shape == (3, 3)


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "noise.png"
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(path)
    return path


def _cli(*args):
    from click.testing import CliRunner

    from convscope.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_npy_names_and_shapes(photo, tmp_path):
    out = tmp_path / "out"
    res = _cli("explain", photo, "--model", "torchvision:resnet18", "--no-pretrained", "--device", "cpu",
               "--method", "occlusion", "--method", "gradcam", "--method", "guided-gradcam", "--method", "saliency",
               "--method", "activations", "--window", 112, "--stride", 56, "--target", 3, "--out", out, "--npy", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output.strip().splitlines()[-1])
    assert info["target"] == 3 and len(info["top"]) == 5
    shapes = {
        "occlusion_activation.npy": (3, 3), "occlusion_probability.npy": (3, 3), "occlusion_top_class.npy": (3, 3),
        "gradcam.npy": (7, 7), "guided_gradcam.npy": (3, 224, 224), "saliency.npy": (224, 224),
        "activations.npy": (512, 7, 7),
    }
    written = {p.split("/")[-1] for p in info["files"]}
    assert written == set(shapes) | {"occlusion.png", "gradcam.png", "guided_gradcam.png", "saliency.png", "activations.png"}
    for name, shape in shapes.items():
        assert np.load(out / name).shape == shape, name
    assert np.load(out / "occlusion_top_class.npy").dtype.kind == "i"


@pytest.mark.parametrize("args,needle", [
    (["--layers", "layer9"], "unknown layer 'layer9'"),
    (["--target", "cat"], "target must be a class index"),
    (["--target", "1000"], "out of range"),
])
def test_cli_one_line_errors(photo, tmp_path, args, needle):
    res = _cli("explain", photo, "--model", "torchvision:resnet18", "--no-pretrained", "--device", "cpu",
               "--method", "gradcam", "--out", tmp_path, *args)
    assert res.exit_code == 2
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


def test_invariance_cli_and_values(photo, tmp_path, resnet):
    from PIL import Image

    r = invariance(resnet, [photo], transform="translate", amounts=[0, 12, 48])
    first, last = r.layers
    assert (first, last) == ("relu", "layer4")
    for layer in r.layers:
        assert r.distances[layer][0, 0] == 0 and (r.distances[layer][0, 1:] > 0).all()
    x = resnet.preprocessing.transform()(Image.open(photo).convert("RGB"))[None]
    with torch.no_grad():
        p = torch.softmax(resnet.module(x), 1)[0]
    assert r.targets == [int(p.argmax())]
    assert r.probability[0, 0] == pytest.approx(float(p.max()), abs=1e-5)  # amount 0: the model's own input
    res = _cli("invariance", photo, photo, "--model", "torchvision:resnet18", "--no-pretrained", "--device", "cpu",
               "--transform", "rotate", "--amounts", "0,90,180", "--out", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output.strip().splitlines()[-1])
    rows = (tmp_path / "invariance_rotate.csv").read_text().strip().splitlines()
    assert rows[0] == "image,transform,amount,target,target_label,probability,distance:relu,distance:layer4"
    assert len(rows) == 1 + 2 * 3 and len(info["files"]) == 2
    assert (tmp_path / "invariance_rotate.png").read_bytes()[:4] == b"\x89PNG"
    res = _cli("invariance", photo, "--model", "torchvision:resnet18", "--no-pretrained", "--transform", "rotate",
               "--layers", "nope", "--out", tmp_path)
    assert res.exit_code == 2 and res.output.startswith("error: unknown layer 'nope'")


# --------------------------------------------------------------------------- the real model


def test_occluding_the_cats_face_lowers_cat_probability_most(default_model):
    """chelsea's centre crop is all face (eyes at y~75-115, nose and mouth at y~150-200): a 48 px
    square anywhere leaves the cat classes at 0.90-0.96, so there is no "face region" to find.
    So the whole photo is shrunk to 150x100 and put on a grey (mean-colour) canvas at (x 8, y 62),
    centre-left; its face, eyes to mouth, then lies in y 85-155, x 45-125 (found by looking)."""
    import skimage.data
    from PIL import Image

    small = Image.fromarray(skimage.data.chelsea()).resize((150, 100), Image.BICUBIC)
    canvas = Image.new("RGB", (224, 224), (128, 128, 128))
    canvas.paste(small, (8, 62))
    r = occlusion(default_model, np.asarray(canvas), window=48, stride=16)
    cat = r.probabilities[..., 281:286].sum(-1)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert 281 <= r.target <= 285 and r.top[0]["probability"] > 0.5
    base = sum(p["probability"] for p in r.top if 281 <= p["class"] <= 285)
    i, j = np.unravel_index(cat.argmin(), cat.shape)
    top, left = r.ys[i], r.xs[j]
    face = (85, 45, 155, 125)  # top, left, bottom, right
    overlaps = top < face[2] and top + 48 > face[0] and left < face[3] and left + 48 > face[1]
    assert overlaps, f"most harmful square at y={top}, x={left}"
    assert cat.min() < base - 0.05
    # squares wholly on the grey canvas change nothing: the occluder is the mean colour
    on_grey = [cat[a, b] for a, y in enumerate(r.ys) for b, x in enumerate(r.xs) if y >= 62 + 100 or x >= 8 + 150]
    assert on_grey and np.abs(np.array(on_grey) - base).max() < 0.01


def test_occlusion_panel_c_shows_guided_backprop_where_the_deconvnet_cannot_depend_on_the_image(default_model):
    """EfficientNet-Lite0 has no max-pool: bn2's deconvnet projection is one picture whatever the
    photo (a uniform checkerboard), so panel (c) shows guided backprop with the atlas's reason."""
    import warnings

    import skimage.data
    from PIL import Image

    from convscope.backproject import project
    from convscope.display import to_picture

    cat = occlusion(default_model, skimage.data.chelsea(), layer="bn2", window=112, stride=112)
    assert cat.projection_method == "guided" and "guided backprop is shown instead" in cat.projection_note
    assert cat.summary()["projection_method"] == "guided" and any(n.startswith("(c): ") for n in cat.notes)
    rocket = occlusion(default_model, skimage.data.rocket(), layer="bn2", window=112, stride=112)
    maps_only = occlusion(default_model, skimage.data.chelsea(), layer="bn2", window=112, stride=112, projection=False)
    assert maps_only.projection is None and maps_only.projection_method is None and maps_only.peak == cat.peak
    np.testing.assert_array_equal(maps_only.probability, cat.probability)
    assert np.abs(cat.projection.astype(int) - rocket.projection.astype(int)).mean() > 5  # it sees the photo
    # drawn as the atlas draws projections
    x = default_model.transform(Image.fromarray(skimage.data.chelsea())).unsqueeze(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = project(default_model, x, "bn2", [cat.channel], [cat.peak], method="guided")[0]
    assert np.abs(cat.projection.astype(int) - to_picture(pixels)[0].astype(int)).max() <= 1
