"""Per-layer linear probes: on a data set that only a layer seeing the whole arrangement can
separate, the shallow layer stays at chance and the deep one does not."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convscope.hooks import hook_count
from convscope.models import Preprocessing, load_model
from convscope.probe import cross_validate, features, labelled_folder, probe

SIZE = 32
PREP = Preprocessing((SIZE, SIZE), SIZE, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
SQUARE = 4

pytestmark = pytest.mark.usefixtures("one_thread")


class ThreeStages(nn.Module):
    """Receptive fields of 3 (relu1), 8 (relu2) and 18 (relu3) pixels; random weights."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv3, self.relu3 = nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.head(self.relu3(self.conv3(x)))


@pytest.fixture(scope="module")
def arrangement(tmp_path_factory):
    """Two classes of 40 photos: a red and a blue square side by side on grey noise, red on the
    left or red on the right, at random places. Both classes hold the same squares, colours and
    edges: only the arrangement differs. A unit that sees 3 x 3 pixels meets the same local
    patterns in both (the squares stay 2 pixels apart and 4 from the border), so its pooled
    response carries no class; a unit that sees both squares at once does."""
    root = tmp_path_factory.mktemp("arrangement")
    rng = np.random.default_rng(0)
    red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    for name, (left, right) in {"red_left": (red, blue), "red_right": (blue, red)}.items():
        (root / name).mkdir()
        for i in range(40):
            img = rng.uniform(0.35, 0.65, (SIZE, SIZE, 3))
            gap = int(rng.integers(2, 5))
            y0 = int(rng.integers(4, SIZE - 4 - SQUARE))
            x0 = int(rng.integers(4, SIZE - 4 - 2 * SQUARE - gap))
            img[y0 : y0 + SQUARE, x0 : x0 + SQUARE] = left
            img[y0 : y0 + SQUARE, x0 + SQUARE + gap : x0 + 2 * SQUARE + gap] = right
            Image.fromarray((img * 255).round().astype(np.uint8)).save(root / name / f"{i:02d}.png")
    (root / ".hidden").mkdir()  # ignored, as are loose files at the top
    (root / "README.txt").write_text("two classes")
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model(ThreeStages(), preprocessing=PREP, device="cpu")


@pytest.fixture(scope="module")
def result(model, arrangement):
    return probe(model, arrangement, ["relu3", "relu1"], folds=5, workers=0)


def test_the_deep_layer_separates_and_the_shallow_one_cannot(result):
    acc = {lp.layer: lp.scores for lp in result.layers}
    # checked over 2 data seeds x 4 weight seeds: relu1 0.42-0.62, relu3 0.78-1.0, by either pooling
    for pool in ("avg", "max"):
        assert acc["relu1"][pool].mean < 0.7, acc
        assert acc["relu3"][pool].mean > 0.85, acc
        assert acc["relu3"][pool].mean - acc["relu1"][pool].mean > 0.25, acc
    assert result.chance == 0.5 and result.n == 80 and result.counts == [40, 40]


def test_records_are_the_issues_json_lines_in_network_order(result):
    lines = [json.loads(line) for line in result.to_json().splitlines()]
    assert [r["layer"] for r in lines] == ["relu1", "relu3"]
    for r, lp in zip(lines, result.layers):
        assert set(r) == {"layer", "accuracy", "std", "n"}
        assert r["accuracy"] == lp.scores["avg"].mean and r["std"] == lp.scores["avg"].std and r["n"] == 80
        assert len(lp.scores["avg"].folds) == 5 and lp.features == {"relu1": 16, "relu3": 32}[lp.layer]


def test_features_are_the_pooled_maps_of_one_plain_forward_pass(model, arrangement):
    paths, labels, classes = labelled_folder(arrangement)
    assert classes == ["red_left", "red_right"] and labels == [0] * 40 + [1] * 40
    feats, kept, skipped = features(model, paths[:6], ["relu1", "relu3"], workers=0)
    assert kept == list(range(6)) and skipped == []
    x = torch.stack([model.transform(Image.open(p).convert("RGB")) for p in paths[:6]])
    with torch.no_grad():
        m = model.module
        r1 = m.relu1(m.conv1(x))
        r3 = m.relu3(m.conv3(m.pool2(m.relu2(m.conv2(m.pool1(r1))))))
    for name, act in (("relu1", r1), ("relu3", r3)):
        np.testing.assert_allclose(feats[name]["avg"], act.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(feats[name]["max"], act.amax(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    assert hook_count(model.module) == 0


def test_no_hook_remains_after_an_error(model, arrangement):
    from convscope.errors import LayerNotRunError

    paths, _, _ = labelled_folder(arrangement)
    model.module.spare = nn.Conv2d(3, 3, 1)  # registered, never run by forward
    try:
        with pytest.raises(LayerNotRunError, match="'spare' did not run"):
            features(model, paths[:4], ["relu1", "spare"], workers=0)
        assert hook_count(model.module) == 0
    finally:
        del model.module.spare


def test_cross_validation_matches_a_plain_loop_over_the_folds():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 5)) + y[:, None] * np.array([1.0, 0, 0, 0, 0])
    score = cross_validate(x, y, folds=4, seed=3)
    accs = []
    for train, test in StratifiedKFold(4, shuffle=True, random_state=3).split(x, y):
        scaler = StandardScaler().fit(x[train])
        clf = LogisticRegression(max_iter=2000).fit(scaler.transform(x[train]), y[train])
        accs.append(float((clf.predict(scaler.transform(x[test])) == y[test]).mean()))
    assert score.folds == pytest.approx(tuple(accs))
    assert score.mean == pytest.approx(np.mean(accs)) and score.std == pytest.approx(np.std(accs))


def test_the_plot_is_written(result, tmp_path):
    path = result.plot(tmp_path / "probe.png")
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"))
    assert img.width > 300 and pixels.std() > 10


def test_bad_folders_and_arguments_are_sentences(model, arrangement, tmp_path):
    (tmp_path / "only").mkdir()
    with pytest.raises(ValueError, match="two or more"):
        probe(model, tmp_path, ["relu1"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        probe(model, tmp_path, ["relu1"])
    with pytest.raises(ValueError, match="fewer than `folds=50`"):
        probe(model, arrangement, ["relu1"], folds=50, workers=0)
    with pytest.raises(ValueError, match="`pool` must be"):
        probe(model, arrangement, ["relu1"], pool="median")
