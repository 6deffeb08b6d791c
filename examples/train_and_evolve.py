"""Worked example: train a small CNN from scratch, watch its features evolve (Zeiler & Fergus 2014,
figure 4), then probe the layers of the embedded default model (section 5).

Part 1 (``--part evolve``) makes its own data: pictures of six shapes (disc, ring, square,
triangle, cross, diamond) in random colours, sizes, places and angles on textured backgrounds,
so that only the shape tells the class. It trains a four-stage CNN on them for a few epochs on
the CPU (cosine-decayed step size), saving a checkpoint per epoch (each in another of the layouts users have), then runs
:func:`convscope.evolve.evolve` over held-out pictures and writes

* ``OUT/evolve-grid.png``: every layer's grid, units as rows, epochs as columns, each cell the
  unit's strongest patch and its deconvnet projection, and under it how much of the unit's top-9
  set the epoch kept from the one before (``top``) and the correlation of its mean map (``r``);
* ``OUT/evolve-changes.png``: the layer means of both numbers against the epoch.

Part 2 (``--part probe``) needs photos named ``nXXXXXXXX_label.JPEG`` (an ImageNet wnid first,
as ImageNet's own files are): it files them under their WordNet album (:mod:`convscope.vocab`,
"animals > dogs"), keeps the albums with at least ``--min-photos`` photos, links them into a
temporary labelled folder, and runs :func:`convscope.probe.probe` of the default model's default
layers, writing ``OUT/probe-default.png``.

    python examples/train_and_evolve.py --out docs/                           # part 1
    python examples/train_and_evolve.py --part probe --photos-dir DIR --out docs/  # part 2

Each part prints its timings and its numbers.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from convscope.evolve import evolve
from convscope.files import atomic_write
from convscope.models import Preprocessing, load_model
from convscope.probe import probe

SIZE = 48
SHAPES = ("disc", "ring", "square", "triangle", "cross", "diamond")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
PREP = Preprocessing((SIZE, SIZE), SIZE, "bilinear", MEAN, STD)
LAYERS = ["relu1", "relu2", "relu3", "relu4"]


# --------------------------------------------------------------------------- the data


def _colour(rng, away_from=None) -> np.ndarray:
    """A random saturated-ish colour, at least 0.45 away (Euclidean, 0-1 RGB) from ``away_from``."""
    while True:
        c = rng.uniform(0, 1, 3)
        if away_from is None or np.linalg.norm(c - away_from) > 0.45:
            return c


def shape_picture(kind: int, rng: np.random.Generator) -> np.ndarray:
    """One (SIZE, SIZE, 3) uint8 picture of shape ``SHAPES[kind]`` on a textured background."""
    bg = _colour(rng)
    fg = _colour(rng, bg)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    # background: a colour gradient in a random direction, plus a faint random texture
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    base = np.clip(bg + (ramp - 0.5) * rng.uniform(0, 0.4), 0, 1)
    img = Image.fromarray((base * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(8, 16)
    cx, cy = rng.uniform(r + 2, SIZE - r - 2, 2)
    rot = rng.uniform(0, 2 * np.pi)
    fill = tuple(int(v * 255) for v in fg)

    def poly(points):
        c, s = math.cos(rot), math.sin(rot)
        draw.polygon([(cx + px * c - py * s, cy + px * s + py * c) for px, py in points], fill=fill)

    name = SHAPES[kind]
    if name == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "ring":
        w = max(2.5, r * 0.35)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=int(round(w)))
    elif name == "square":
        a = r * 0.85
        poly([(-a, -a), (a, -a), (a, a), (-a, a)])
    elif name == "triangle":
        poly([(r * math.cos(t), r * math.sin(t)) for t in (0, 2 * math.pi / 3, 4 * math.pi / 3)])
    elif name == "cross":
        a, b = r, r * 0.3
        poly([(-a, -b), (a, -b), (a, b), (-a, b)])
        poly([(-b, -a), (b, -a), (b, a), (-b, a)])
    else:  # diamond: a rhombus, longer than wide
        poly([(0, -r), (r * 0.55, 0), (0, r), (-r * 0.55, 0)])
    arr = np.asarray(img, dtype=np.float32) / 255 + rng.normal(0, 0.04, (SIZE, SIZE, 3))
    return (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)


def shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(SHAPES), n)
    return np.stack([shape_picture(int(k), rng) for k in y]), y


# --------------------------------------------------------------------------- the model


class ShapeNet(nn.Module):
    """Four conv stages (5x5 then 3x3 convolutions, batch norm, ReLU, 2x2 max-pool), global
    average pooling and a linear classifier; 35k parameters."""

    def __init__(self, classes: int = len(SHAPES), widths=(12, 24, 48, 48)):
        super().__init__()
        a, b, c, d = widths
        self.conv1, self.bn1, self.relu1, self.pool1 = nn.Conv2d(3, a, 5, padding=2), nn.BatchNorm2d(a), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.bn2, self.relu2, self.pool2 = nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)
        self.conv3, self.bn3, self.relu3, self.pool3 = nn.Conv2d(b, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)
        self.conv4, self.bn4, self.relu4 = nn.Conv2d(c, d, 3, padding=1), nn.BatchNorm2d(d), nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(d, classes))

    def forward(self, x):
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.pool3(self.relu3(self.bn3(self.conv3(x))))
        return self.head(self.relu4(self.bn4(self.conv4(x))))


def to_input(pictures: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(pictures).float().div(255).permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def save_checkpoint(net: nn.Module, epoch: int, folder: Path) -> Path:
    """A checkpoint per epoch, in turn in the layouts users have (all read the same way)."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    layout = ("bare", "lightning", "model", "safetensors")[(epoch - 1) % 4]
    path = folder / f"epoch{epoch:02d}.{'safetensors' if layout == 'safetensors' else 'pt'}"
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif layout == "lightning":
        torch.save({"epoch": epoch, "state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    elif layout == "model":
        torch.save({"model": state, "epoch": epoch}, path)
    else:
        torch.save(state, path)
    return path


def train(epochs: int, train_n: int, folder: Path, seed: int = 0) -> list[Path]:
    x_all, y_all = shapes(train_n + 1000, seed)
    x, y = to_input(x_all[:train_n]), torch.from_numpy(y_all[:train_n])
    xv, yv = to_input(x_all[train_n:]), torch.from_numpy(y_all[train_n:])
    torch.manual_seed(seed)
    net = ShapeNet()
    steps = epochs * math.ceil(train_n / 64)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    order = torch.Generator().manual_seed(seed)
    paths = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(train_n, generator=order)
        total = 0.0
        for i in range(0, train_n, 64):
            b = perm[i : i + 64]
            # flips: every class is symmetric, so this is free data
            xb = torch.where(torch.rand(len(b), 1, 1, 1) < 0.5, x[b].flip(3), x[b])
            loss = nn.functional.cross_entropy(net(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        net.eval()
        with torch.no_grad():
            acc = float((net(xv).argmax(1) == yv).float().mean())
        paths.append(save_checkpoint(net, epoch, folder))
        print(f"epoch {epoch:2d}: loss {total / train_n:.3f}, held-out accuracy {acc:.3f} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return paths


def part_evolve(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="convscope-evolve-"))
    (work / "checkpoints").mkdir(parents=True, exist_ok=True)
    photos = work / "photos"
    photos.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    paths = train(args.epochs, args.train, work / "checkpoints")
    t_train = time.perf_counter() - t0
    for i, pic in enumerate(shapes(args.photos, seed=12345)[0]):
        Image.fromarray(pic).save(photos / f"{i:04d}.png")
    t1 = time.perf_counter()
    result = evolve(ShapeNet, paths, [photos], LAYERS, count=args.units, top=9, preprocessing=PREP,
                    device="cpu", workers=args.workers)
    t_evolve = time.perf_counter() - t1
    out = Path(args.out)
    with atomic_write(out / "evolve-grid.png") as f:
        result.figure(size=56).save(f, format="PNG")
    result.plot_changes(out / "evolve-changes.png")
    with atomic_write(work / "evolve.jsonl", "w") as f:
        f.write(result.to_json(all_units=True))
    print(f"\ntrained {args.epochs} epochs on {args.train} pictures in {t_train:.1f} s; evolve over "
          f"{result.photos} photos x {len(paths)} checkpoints in {t_evolve:.1f} s (work folder {work})")
    print("layer means per step (top-9 kept / mean-map correlation):")
    for name, ev in result.layers.items():
        steps = "  ".join(f"{o:.2f}/{r:.3f}" for o, r in zip(ev.mean_overlap(), ev.mean_correlation()))
        print(f"  {name:6s} {steps}")
    print(f"wrote {out / 'evolve-grid.png'} and {out / 'evolve-changes.png'}")


# --------------------------------------------------------------------------- part 2: probe


def albums_of(photos: Path) -> dict[str, list[Path]]:
    """Photos named ``nXXXXXXXX_*`` filed under their album ("animals > dogs"); None-album and
    unknown wnids left out."""
    from convscope.vocab import Vocabulary, album_for

    index = {w: i for i, w in enumerate(Vocabulary.load().class_wnids)}
    found: dict[str, list[Path]] = {}
    for p in sorted(photos.iterdir()):
        wnid = p.name.split("_", 1)[0]
        album = album_for(index[wnid]) if wnid in index else None
        if album is not None:
            found.setdefault(album, []).append(p)
    return found


def part_probe(args) -> None:
    if not args.photos_dir:
        sys.exit("--part probe needs --photos-dir DIR (photos named nXXXXXXXX_label.JPEG)")
    albums = {a: ps for a, ps in albums_of(Path(args.photos_dir)).items() if len(ps) >= args.min_photos}
    if len(albums) < 2:
        sys.exit(f"fewer than two albums with {args.min_photos} photos in {args.photos_dir}")
    with tempfile.TemporaryDirectory(prefix="convscope-probe-") as tmp:
        for album, ps in albums.items():
            d = Path(tmp) / album.replace(" > ", " - ")
            d.mkdir()
            for p in ps:
                os.symlink(p.resolve(), d / p.name)
        print("classes:", ", ".join(f"{a} ({len(ps)})" for a, ps in sorted(albums.items())))
        t0 = time.perf_counter()
        model = load_model(device="cpu")
        t_load = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = probe(model, tmp, model.layers.default, folds=args.folds, workers=args.workers)
        t_probe = time.perf_counter() - t1
    out = Path(args.out)
    result.plot(out / "probe-default.png",
                title=f"{model.spec}: {result.n} photos (one per ImageNet class) in "
                      f"{len(result.classes)} WordNet albums")
    print(f"\nloaded the model in {t_load:.1f} s; probe of {len(result.layers)} layers over {result.n} photos "
          f"({args.folds}-fold) in {t_probe:.1f} s; chance {result.chance:.3f}")
    for lp in result.layers:
        a, m = lp.scores["avg"], lp.scores["max"]
        print(f"  {lp.layer:9s} {lp.features:5d} features  avg {a.mean:.3f} +- {a.std:.3f}   max {m.mean:.3f} +- {m.std:.3f}")
    for note in result.notes():
        print("  note:", note)
    print(result.to_json(), end="")
    print(f"wrote {out / 'probe-default.png'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("evolve", "probe", "both"), default="evolve")
    parser.add_argument("--out", default="docs", help="folder for the figures (default: docs)")
    parser.add_argument("--work", help="folder for checkpoints and photos (default: a new temporary folder)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train", type=int, default=2000, help="training pictures")
    parser.add_argument("--photos", type=int, default=400, help="held-out pictures that evolve scans")
    parser.add_argument("--units", type=int, default=4, help="units drawn per layer")
    parser.add_argument("--photos-dir", "--probe-photos", dest="photos_dir",
                        help="ImageNet-named photos for part 2")
    parser.add_argument("--min-photos", type=int, default=20, help="smallest album kept for the probe")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (default 0)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.part in ("evolve", "both"):
        part_evolve(args)
    if args.part in ("probe", "both"):
        part_probe(args)


if __name__ == "__main__":
    main()
