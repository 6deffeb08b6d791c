"""The streaming top-k scan: exact against a brute-force loop, mergeable, resumable, hook-clean."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.errors import ConvscopeError
from convscope.hooks import hook_count
from convscope.models import Preprocessing, load_model
from convscope.scan import Crops, ScanState, Sketch, _order_key, merge, scan

from tests.tiny import TinyNet, pooled

SIZE = 32


def tiny_model():
    torch.manual_seed(0)
    net = TinyNet(*pooled(batchnorm=True))
    with torch.no_grad():  # non-trivial batch-norm statistics
        net.features[4].running_mean.uniform_(-0.2, 0.2)
        net.features[4].running_var.uniform_(0.5, 1.5)
    prep = Preprocessing((SIZE, SIZE), SIZE, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return load_model(net, preprocessing=prep, device="cpu")


LAYERS = ["features.1", "features.5", "features"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """36 small synthetic photos (two are byte-identical copies, so ties occur) and a bad file."""
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(34):
        h, w = int(rng.integers(32, 48)), int(rng.integers(32, 48))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[: h // 3] = (arr[: h // 3] // 4) + 180 * (i % 3 == 0)  # some structure and contrast
        p = d / f"p{i:02d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    for i in (3, 10):  # exact duplicates: identical activations, ties broken by the lower id
        p = d / f"p{34 + (i == 10):02d}.png"
        p.write_bytes(paths[i].read_bytes())
        paths.append(p)
    bad = d / "p99.png"
    bad.write_bytes(b"not an image at all")
    return [str(p) for p in paths], str(bad)


def brute_force(model, paths, layers, k):
    """Every activation of every image kept; top-k per unit by a plain Python sort."""
    from convscope.data import iter_batches
    from convscope.hooks import forward_layers

    acts = {name: [] for name in layers}
    for batch in iter_batches(paths, model.transform, batch_size=8, workers=0):
        with torch.no_grad():
            out = forward_layers(model.module, batch.tensors, layers)
        for name in layers:
            acts[name].append(out[name])
    result = {}
    for name in layers:
        a = torch.cat(acts[name])  # (N, C, H, W)
        n, c, h, w = a.shape
        tops = []
        for u in range(c):
            cands = []
            sums = a.reshape(n, c, -1).sum(2)[:, u]  # the tie-break: the sum of the map
            for i in range(n):
                m = a[i, u].reshape(-1)
                j = int(torch.argmax(m))  # first position of the maximum
                cands.append((-float(m[j]), -float(sums[i]), i, j // w, j % w))
            cands.sort()
            tops.append([(-v, i, y, x) for v, _s, i, y, x in cands[:k]])
        result[name] = (tops, a)
    return result


def test_top_k_equals_brute_force(model, photos):
    paths, _ = photos
    k = 5
    res = scan(model, paths, LAYERS, top=k, batch_size=8, workers=0)
    ref = brute_force(model, paths, LAYERS, k)
    assert res.state.images == len(paths)
    tied = 0
    for name in LAYERS:
        values, ids, ys, xs = res.state.top(name)
        tops, a = ref[name]
        for u, expected in enumerate(tops):
            got = list(zip(values[u].tolist(), ids[u].tolist(), ys[u].tolist(), xs[u].tolist()))
            assert got == expected, (name, u)
            tied += sum(1 for p, q in zip(expected, expected[1:]) if p[0] == q[0])
        # the distribution summary against the kept activations
        s = res.state.summary(name)
        flat = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1).double()
        torch.testing.assert_close(s["mean"], flat.mean(1), rtol=1e-6, atol=1e-6)
        assert torch.equal(s["max"], a.amax((0, 2, 3)))
        assert torch.equal(s["min"], a.amin((0, 2, 3)))
        # maps of at most 32 x 32: the sketch counts every position
        torch.testing.assert_close(s["frac_positive"], (flat > 0).double().mean(1))
        assert int(s["hist"].sum(1).unique()) == flat.shape[1] == len(paths) * s["positions"]
        for qi, q in enumerate(s["quantile_levels"].tolist()):
            exact = torch.quantile(flat, q, dim=1, interpolation="lower")
            err = (s["quantiles"][:, qi] - exact).abs()
            assert bool((err <= 0.0625 * exact.abs() + 1e-30).all()), (name, q)
    assert tied > 0  # the duplicate photos did produce ties, broken by the lower image id


def test_merge_of_parts_equals_whole_scan(model, photos, tmp_path):
    paths, _ = photos
    whole = scan(model, paths, LAYERS, top=4, batch_size=8, workers=0).state
    a = scan(model, paths[:16], LAYERS, top=4, batch_size=8, workers=0).state
    b = scan(model, paths[16:], LAYERS, top=4, batch_size=8, workers=0, offset=16).state
    assert merge(a, b) == whole
    assert merge(b, a) == whole  # order does not matter
    # serialized and read back with weights_only loading, then merged
    a.save(tmp_path / "a.pt")
    data = torch.load(tmp_path / "a.pt", weights_only=True)
    a2 = ScanState.from_state_dict(data["state"])
    assert a2 == a and a2.merge(b) == whole
    assert ScanState.load(tmp_path / "a.pt") == a


def test_update_matches_engine_contract(model):
    """ScanState.update on hand-made activations: per image the spatial max; of equal maxima the
    larger map sum first, then the lower id."""
    state = ScanState({"l": (2, 2, 3)}, top=3)
    acts = torch.zeros(5, 2, 2, 3)
    acts[0, 0, 1, 2] = 5.0
    acts[1, 0, 0, 1] = 5.0  # same value and sum, higher id: ranks after image 10
    acts[2, 0, 1, 0] = 7.0
    acts[3, 1] = -1.0
    acts[3, 1, 1, 1] = -0.5
    acts[4, 0, 0, 0] = acts[4, 0, 1, 1] = 5.0  # same maximum, larger sum: before images 10 and 11
    state.update({"l": acts[:4]}, [10, 11, 12, 13])
    values, ids, ys, xs = state.top("l")
    assert values[0].tolist() == [7.0, 5.0, 5.0] and ids[0].tolist() == [12, 10, 11]
    assert (ys[0].tolist(), xs[0].tolist()) == ([1, 1, 0], [0, 2, 1])
    assert ids[1].tolist() == [10, 11, 12] and values[1].tolist() == [0.0, 0.0, 0.0]  # image 13's max is -0.5
    state.update({"l": acts[4:]}, [14])
    values, ids, ys, xs = state.top("l")
    assert ids[0].tolist() == [12, 14, 10] and (ys[0, 1].item(), xs[0, 1].item()) == (0, 0)
    with pytest.raises(ValueError, match="expected activations of shape"):
        state.update({"l": torch.zeros(2, 3, 2, 3)}, [1, 2])


def test_order_key_sorts_by_value_then_lower_id():
    vals = torch.tensor([[1.5, -2.0, 1.5, float("-inf"), 0.0, -0.0, 3.0, -2.0]])
    ids = torch.tensor([[4, 2, 3, 9, 5, 6, 7, 1]])
    keys = _order_key(vals, ids)
    order = torch.argsort(keys, descending=True)[0].tolist()
    expected = sorted(range(8), key=lambda i: (-vals[0, i].item(), ids[0, i].item()))
    # +0.0 and -0.0 compare equal as floats but not as keys: +0.0 first
    assert [ids[0, i].item() for i in order] == [7, 3, 4, 5, 6, 1, 2, 9]
    assert [vals[0, i].item() for i in order] == [vals[0, i].item() for i in expected]
    empty = _order_key(torch.tensor([[float("-inf")]]), torch.tensor([[-1]]))
    assert int(empty) < int(keys.min())


def test_sketch_bins_hold_their_values():
    sk = Sketch()
    edges = sk.edges()
    v = torch.cat([torch.randn(20000) * 10 ** torch.empty(20000).uniform_(-30, 30), torch.tensor([0.0, -0.0, 1.0, -1.0])])
    raw = sk.codes(v.float()).long() + sk.half
    where = torch.argsort(sk.order())[raw]  # raw bin -> position in value order
    lo, hi = edges[where], edges[where + 1]
    vd = v.float().double()
    negative = torch.signbit(v)  # -0.0 sits in the bin just below +0.0
    assert bool(((lo <= vd) & (vd < hi))[~negative].all())
    assert bool(((lo < vd) & (vd <= hi))[negative].all())
    finite = torch.isfinite(lo) & torch.isfinite(hi) & (lo.abs() > 2.0**-126)
    assert bool(((hi - lo) <= lo.abs() / 8 * 1.0000001)[finite].all())  # 8 slices per octave
    assert sk.bins == len(edges) - 1 == 4096 and bool((edges[1:] >= edges[:-1]).all())


def test_sketch_samples_large_maps_on_a_fixed_grid():
    sk = Sketch(grid=4)
    assert sk.steps(10, 7) == (3, 2) and sk.positions(10, 7) == 4 * 4
    state = ScanState({"l": (2, 10, 7)}, top=2, sketch=sk)
    acts = torch.randn(3, 2, 10, 7)
    state.update({"l": acts}, [0, 1, 2])
    s = state.summary("l", quantiles=(0.5,))
    sample = acts[:, :, ::3, ::2]
    assert s["hist"].sum(1).tolist() == [3 * 16, 3 * 16]
    assert torch.equal(s["min"], sample.amin((0, 2, 3))) and torch.equal(s["max"], acts.amax((0, 2, 3)))
    torch.testing.assert_close(s["mean"], acts.double().mean((0, 2, 3)), rtol=0, atol=1e-4)
    torch.testing.assert_close(s["frac_positive"], (sample > 0).double().mean((0, 2, 3)))


def test_no_hook_left_and_outputs_unchanged_also_after_an_error(model, photos, monkeypatch):
    paths, _ = photos
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        before = model.module(x).clone()
    scan(model, paths[:8], LAYERS, top=2, batch_size=4, workers=0)
    assert hook_count(model.module) == 0
    with torch.no_grad():
        assert torch.equal(model.module(x), before)

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ScanState, "update", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        scan(model, paths[:8], LAYERS, top=2, batch_size=4, workers=0)
    assert hook_count(model.module) == 0
    with torch.no_grad():
        assert torch.equal(model.module(x), before)
    assert not model.module.training


def test_bad_images_are_skipped_and_counted(model, photos, tmp_path):
    paths, bad = photos
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    res = scan(model, [bad, *paths[:6], str(empty), str(tmp_path / "missing.png")], ["features"], top=3, workers=0)
    reasons = dict(res.skipped)
    assert set(reasons) == {bad, str(empty), str(tmp_path / "missing.png")}
    assert "empty" in reasons[str(empty)] and "not an image" in reasons[bad]
    assert res.photos_scanned == 6 and res.state.images == 6
    # ids index the full list: the bad file is photo 0, so the good ones are photos 1..6
    assert set(res.state.top("features")[1].flatten().tolist()) <= set(range(1, 7))


def test_checkpoint_resume_equals_uninterrupted(model, photos, tmp_path, monkeypatch):
    paths, bad = photos
    inputs = [*paths[:20], bad, *paths[20:]]
    whole = scan(model, inputs, LAYERS, top=3, batch_size=4, workers=0)
    ckpt = tmp_path / "scan.ckpt"
    real_update, calls = ScanState.update, []

    def dies_on_sixth_batch(self, acts, ids):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_update(self, acts, ids)

    monkeypatch.setattr(ScanState, "update", dies_on_sixth_batch)
    with pytest.raises(KeyboardInterrupt):
        scan(model, inputs, LAYERS, top=3, batch_size=4, workers=0, checkpoint=ckpt, checkpoint_every=8)
    monkeypatch.setattr(ScanState, "update", real_update)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["extra"]["next"] == 16 and saved["state"]["images"] == 16
    resumed = scan(model, inputs, LAYERS, top=3, batch_size=4, workers=0, checkpoint=ckpt, checkpoint_every=8, resume=True)
    assert resumed.state == whole.state
    assert resumed.skipped == whole.skipped == [(bad, "not an image (unknown or unsupported format)")]
    assert resumed.hashes == whole.hashes and len(whole.hashes) > 0
    with pytest.raises(ConvscopeError, match="other settings"):
        scan(model, inputs, LAYERS, top=4, batch_size=4, workers=0, checkpoint=ckpt, resume=True)


def test_crops_windows_and_boxes_on_the_original_photo(tmp_path):
    """A photo whose red channel is its x coordinate and green its y: the model-input pixels
    inside a box carry original coordinates inside the box mapped back to the photo."""
    w, h = 200, 150
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
    path = tmp_path / "coords.png"
    Image.fromarray(arr).save(path)
    prep = Preprocessing((56, 56), 64, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    crops = Crops.parse("1,2,3")
    windows = crops.windows(w, h)
    assert crops.count == len(windows) == 14
    assert windows[0] == (0, 0, w, h) and windows[1] == (0, 0, 133, 100) and windows[4] == (67, 50, 200, 150)
    img = Image.open(path).convert("RGB")
    transform = prep.transform()
    for window in (windows[0], windows[3], windows[9]):
        x = transform(img.crop(window))  # (3, 56, 56), pixels in [0, 1]
        for box in ((0, 0, 56, 56), (10, 20, 30, 41), (40, 3, 56, 17)):
            t, l, b, r = prep.input_box_to_original(box, window)
            seen_x = x[0, box[0] : box[2], box[1] : box[3]] * 255
            seen_y = x[1, box[0] : box[2], box[1] : box[3]] * 255
            assert l - 1.5 <= float(seen_x.min()) and float(seen_x.max()) <= r + 0.5
            assert t - 1.5 <= float(seen_y.min()) and float(seen_y.max()) <= b + 0.5
            # and the box is tight: the seen coordinates reach close to its edges
            assert float(seen_x.min()) <= l + 3 and float(seen_x.max()) >= r - 4


def test_scan_with_crops_numbers_images_by_photo_and_crop(model, photos):
    paths, _ = photos
    res = scan(model, paths[:4], ["features"], top=40, crops="1,2", batch_size=10, workers=0)
    assert res.crops.count == 5 and res.state.images == 20
    ex = res.examples("features", 0)
    assert len(ex) == 20 and sorted(e.image_id for e in ex) == list(range(20))
    assert all(e.photo == e.image_id // 5 and e.crop == e.image_id % 5 and e.path == paths[e.photo] for e in ex)


def test_hashes_are_those_of_the_photos_among_the_top_examples(model, photos):
    """The scan hashes each photo from the bytes it decodes, and keeps the hashes of the photos
    some unit still holds among its top examples (pruned as it goes, at each checkpoint interval)."""
    import hashlib
    from pathlib import Path

    paths, bad = photos
    res = scan(model, [bad, *paths], ["features"], top=1, batch_size=4, workers=0, checkpoint_every=4)
    held = {res.photo_of(i)[0] for i in res.state.top("features")[1].flatten().tolist() if i >= 0}
    assert set(res.hashes) == held and 0 < len(held) <= 16 < len(paths)
    for p in held:
        assert res.hashes[p] == hashlib.sha256(Path(res.paths[p]).read_bytes()).hexdigest()
    assert res.image_id(*res.photo_of(7)) == 7 and res.crops.photo_crop(res.crops.image_id(3, 0)) == (3, 0)


def test_bad_arguments_are_one_line_errors(model, photos):
    paths, _ = photos
    with pytest.raises(ValueError, match="top"):
        scan(model, paths[:2], top=0)
    with pytest.raises(ConvscopeError, match="unknown layer 'features.99'"):
        scan(model, paths[:2], ["features.99"])
    with pytest.raises(ValueError, match="`crops` levels"):
        Crops.parse("0,2")
    a = ScanState({"l": (2, 2, 2)}, top=2)
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(ScanState({"l": (2, 2, 2)}, top=3))
