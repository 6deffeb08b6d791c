"""Benchmark of the atlas scan, side by side in one run, on one model, batch size and thread count.

1. scan throughput (every default layer hooked, the ScanState updated) vs the bare forward
   pass, both on already-decoded tensors (target: ratio >= 0.9);
2. end-to-end images/s of ``convscope.scan.scan`` on JPEG files (decoding included);
3. projections per second: ``project_boxes`` as ``atlas build`` runs it (both methods, several
   examples per input) vs captum's ``NeuronDeconvolution`` and ``NeuronGuidedBackprop`` one
   example at a time (target: ratio >= 5);
4. peak memory (RSS growth of the scanning process) for 1,000 vs 10,000 small images on disk
   (target: within 10 percent), each size in a fresh subprocess.

    python bench/scan.py                       # about 5 minutes on 2 CPU cores
    python bench/scan.py --device cuda         # channels_last + bfloat16 autocast
    python bench/scan.py --quick               # smaller sizes, for a smoke test

Two checkouts side by side (``bench/_trees.py``): ``--before DIR`` measures every figure for DIR
and for this checkout (or ``--after DIR``), each in its own worker process with PYTHONPATH set to
it, alternating round by round, and prints both with the ratio after / before. Figures [1]-[3]
take the median of ``--rounds`` (default 3; projections one round fewer, 4 inputs and 4 captum
examples per layer instead of 8); [4] runs each size in a fresh process per tree.

    python bench/scan.py --before /work/wt/base                 # about 5 minutes on 2 idle CPU cores
    python bench/scan.py --before /work/wt/base --after /work/main
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _trees import Figure, Trees, median, print_table, two_tree_run

warnings.simplefilter("ignore")  # the projections' rule notes (ReLU6 treated as ReLU)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def prepare_model(spec: str, device: str, input_size: int | None = None):
    from convscope.models import Preprocessing, load_model

    model = load_model(spec, device=device)
    if input_size:  # the same network, fed small images
        p = model.preprocessing
        small = Preprocessing((input_size, input_size), input_size, p.interpolation, p.mean, p.std)
        model = dataclasses.replace(model, preprocessing=small)
    if model.device.type == "cuda":
        model.module.to(memory_format=torch.channels_last)  # the bench's own model: fine to convert
    return model


def autocast(device):
    return torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")


# --------------------------------------------------------------------------- 1. overhead


def bench_overhead(model, batch: int, batches: int, rounds: int) -> dict:
    from convscope.hooks import capture, run
    from convscope.scan import ScanState

    infos = model.layers.select(None)
    names = [i.name for i in infos]
    dev = model.device
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    xs = [torch.randn(batch, 3, *model.input_size).to(dev).contiguous(memory_format=fmt) for _ in range(batches)]
    state = ScanState({i.name: i.shape for i in infos}, 9, dev)

    def bare():
        with torch.inference_mode(), autocast(dev):
            for x in xs:
                model.module(x)
        sync(dev)

    def scanned():
        with torch.inference_mode(), autocast(dev), capture(model.module, names) as outs:
            for i, x in enumerate(xs):
                run(model.module, x, outs)
                state.update(outs, torch.arange(i * batch, (i + 1) * batch))
        sync(dev)

    bare(), scanned()  # warm up
    rates = {"bare": [], "scan": []}
    for _ in range(rounds):  # interleaved, so that a busy moment hurts both alike
        for name, fn in (("bare", bare), ("scan", scanned)):
            t = time.perf_counter()
            fn()
            rates[name].append(batch * batches / (time.perf_counter() - t))
    bare_r, scan_r = statistics.median(rates["bare"]), statistics.median(rates["scan"])
    return {"layers": names, "bare_images_per_s": bare_r, "scan_images_per_s": scan_r, "ratio": scan_r / bare_r}


# --------------------------------------------------------------------------- 2. end to end


def write_photos(folder: Path, n: int, size: tuple[int, int], fmt: str = "JPEG") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    paths = []
    for i in range(n):
        small = np.roll(base, i, axis=(0, 1)) ^ np.uint8(i % 256)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        p = folder / f"img{i:05d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        img.save(p, fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}))
        paths.append(str(p))
    return paths


def bench_end_to_end(model, paths: list[str], batch: int, workers: int | None) -> dict:
    from convscope.scan import scan

    scan(model, paths[: batch], top=9, batch_size=batch, workers=0, autocast=True)  # warm up
    t = time.perf_counter()
    result = scan(model, paths, top=9, batch_size=batch, workers=workers, autocast=True)
    sync(model.device)
    dt = time.perf_counter() - t
    return {"images": len(paths), "seconds": dt, "images_per_s": result.state.images / dt, "photo_size": "640x480 JPEG"}


# --------------------------------------------------------------------------- 3. projections


def bench_projections(model, layers: list[str], images: int, top: int, photos: int, per_pass: int,
                      captum_n: int) -> dict:
    """Projections as ``atlas build`` computes them vs captum one example at a time, per layer.

    Ours: ``project_boxes`` on the atlas's private copy (BatchNorm folded, channels-last), both
    methods (deconvnet and guided), on ``images`` distinct inputs carrying the examples an atlas
    of ``photos`` photos and ``top`` examples per unit puts on each photo on average (units x
    top / photos, at least 1: 23 for a 1,280-unit layer and 500 photos), the unit values given
    as the scan gives them. Also the worst case: one example per input, deconvnet only.
    captum: ``NeuronDeconvolution`` and ``NeuronGuidedBackprop`` on the whole input, one example
    at a time (``captum_n`` of each)."""
    from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

    from convscope.backproject import project_boxes, projection_module
    from convscope.hooks import forward_layers

    dev = model.device
    example = torch.randn(1, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    module, fmt = projection_module(model.module, example, layers)
    x = torch.randn(images, 3, *model.input_size, generator=torch.Generator().manual_seed(1)).to(dev)
    infos = {i.name: i for i in model.layers.select(layers)}
    methods = ("deconvnet", "guided")
    per_layer = {}
    for layer in layers:
        info = infos[layer]
        c, h, w = info.shape
        k = max(1, round(c * top / photos))
        n = images * k
        which = [i // k for i in range(n)]
        units = [(7 * i + i // k) % c for i in range(n)]
        positions = [((3 * i) % h, (5 * i) % w) for i in range(n)]
        with torch.inference_mode():
            out = forward_layers(model.module, x, [layer])[layer].float()
        values = [float(out[which[i], units[i], positions[i][0], positions[i][1]]) for i in range(n)]
        inputs = [x[i] for i in range(images)]

        def ours(ks, meths):
            sync(dev)
            t = time.perf_counter()
            with autocast(dev):
                _, counts = project_boxes(module, info, [inputs[which[i]] for i in ks], [units[i] for i in ks],
                                          [positions[i] for i in ks], [values[i] for i in ks], meths,
                                          batch_size=per_pass, memory_format=fmt)
            sync(dev)
            return time.perf_counter() - t, counts

        ours(list(range(min(n, 2 * k))), methods)  # warm up
        ours(list(range(n)), methods)  # warm up the batch shapes
        dt, counts = ours(list(range(n)), methods)
        firsts = [i * k for i in range(images)]  # one example per input
        dt1, _ = ours(firsts, ("deconvnet",))
        theirs = 0.0
        for cls in (NeuronDeconvolution, NeuronGuidedBackprop):
            attr = cls(model.module, model.module.get_submodule(layer))
            attr.attribute(x[:1].clone().requires_grad_(), neuron_selector=(units[0], *positions[0]))  # warm up
            sync(dev)
            t = time.perf_counter()
            for j in range(captum_n):
                i = firsts[j % images]
                attr.attribute(x[which[i] : which[i] + 1].clone().requires_grad_(), neuron_selector=(units[i], *positions[i]))
            sync(dev)
            theirs += time.perf_counter() - t
        captum_per_s = 2 * captum_n / theirs
        per_layer[layer] = {
            "units": c, "per_input": k, "ours_per_s": 2 * n / dt, "captum_per_s": captum_per_s,
            "ratio": (2 * n / dt) / captum_per_s, "one_per_input_ratio": (images / dt1) / captum_per_s,
            "windowed": counts["windowed"], "examples": n,
        }
    # an atlas projects top examples of every unit: weigh each layer by its number of units
    t_ours = sum(v["units"] / v["ours_per_s"] for v in per_layer.values())
    t_theirs = sum(v["units"] / v["captum_per_s"] for v in per_layer.values())
    return {"per_layer": per_layer, "atlas_ratio": t_theirs / t_ours}


# --------------------------------------------------------------------------- 4. memory


def reset_peak_rss() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets VmHWM (the peak RSS)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def current_rss_kib() -> int:
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    return _status_kib("VmHWM")


def memory_child(args) -> None:
    """Run in a fresh process: scan the first ``n`` images, print the RSS growth as JSON."""
    from convscope.scan import scan

    torch.set_num_threads(args.threads)
    model = prepare_model(args.model, args.device, args.memory_input)
    paths = sorted(str(p) for p in Path(args.folder).iterdir())[: args.n]
    scan(model, paths[: args.batch_size], top=9, batch_size=args.batch_size, workers=args.workers, autocast=True)
    # The layer catalogue's receptive-field probe (done once, above) peaks far higher than a scan:
    # reset the kernel's high-water mark so that the peak below is the scan's own.
    reset = reset_peak_rss()
    base = current_rss_kib()
    t = time.perf_counter()
    result = scan(model, paths, top=9, batch_size=args.batch_size, workers=args.workers, autocast=True)
    dt = time.perf_counter() - t
    peak = peak_rss_kib() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": args.n, "images": result.state.images, "base_kib": base, "peak_kib": peak,
                      "growth_kib": peak - base, "seconds": dt}))


def memory_run(args, folder: Path, n: int, env: dict | None = None) -> dict:
    """One memory child: a fresh process (under ``env``: a tree's PYTHONPATH) scanning ``n`` images."""
    cmd = [sys.executable, __file__, "--memory-child", "--n", str(n), "--folder", str(folder),
           "--model", args.model, "--device", args.device, "--threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--memory-input", str(args.memory_input)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"the memory run of {n} images failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def memory_ratios(runs: dict, sizes: list[int]) -> dict:
    a, b = runs[sizes[0]], runs[sizes[-1]]
    return {"runs": runs, "peak_ratio": b["peak_kib"] / a["peak_kib"], "growth_ratio": b["growth_kib"] / max(1, a["growth_kib"])}


def bench_memory(args, folder: Path, sizes: list[int]) -> dict:
    write_photos(folder, max(sizes), (64, 64), fmt="PNG")
    return memory_ratios({n: memory_run(args, folder, n) for n in sizes}, sizes)


# --------------------------------------------------------------------------- two trees (--before)
# Calls made by the harness in each tree's worker process (bench/_trees.py); the model is loaded
# once per worker.

_WORKER: dict = {}


def w_load(spec: str, device: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    from convscope.runtime import keep_freed_memory

    keep_freed_memory()
    model = _WORKER["model"] = prepare_model(spec, device)
    return {"device": str(model.device), "input_size": list(model.input_size), "layers": list(model.layers.default)}


def w_overhead(batch: int, batches: int, rounds: int) -> dict:
    return bench_overhead(_WORKER["model"], batch, batches, rounds)


def w_end_to_end(paths: list[str], batch: int, workers: int | None) -> dict:
    return bench_end_to_end(_WORKER["model"], paths, batch, workers)


def w_projections(layers: list[str], images: int, per_pass: int, captum_n: int) -> dict:
    return bench_projections(_WORKER["model"], layers, images=images, top=9, photos=500, per_pass=per_pass,
                             captum_n=captum_n)


def w_warm_memory_input(path: str, spec: str, device: str, input_size: int) -> None:
    from convscope.scan import scan

    scan(prepare_model(spec, device, input_size), [path], top=1, batch_size=1, workers=0)


def compare(args, trees: Trees) -> None:
    """Every figure for both trees, alternately, then the table of after / before."""
    quick, b = args.quick, args.batch_size
    print(f"scan benchmark, two trees side by side; model {args.model}, batch {b}, threads {args.threads}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs\n{trees.header()}", flush=True)
    rounds = args.rounds or (2 if quick else 3)
    figures: list[Figure] = []
    with trees.workers(__file__) as w, tempfile.TemporaryDirectory() as tmp:
        info = w.broadcast("w_load", spec=args.model, device=args.device, threads=args.threads)
        layers = info["after"]["layers"]
        if info["before"]["layers"] != layers:
            print(f"note: the default layers differ: before {info['before']['layers']}, after {layers}")

        runs = w.interleave("w_overhead", rounds, batch=b, batches=1 if quick else 2, rounds=2)
        med = {t: {k: median(r[k] for r in runs[t]) for k in ("bare_images_per_s", "scan_images_per_s", "ratio")}
               for t in runs}
        figures += [
            Figure("[1] bare forward, img/s (decoded tensors)", med["before"]["bare_images_per_s"],
                   med["after"]["bare_images_per_s"]),
            Figure("[1] scan, default layers hooked, img/s", med["before"]["scan_images_per_s"],
                   med["after"]["scan_images_per_s"]),
            Figure("[1] scan / bare forward (target >= 0.9)", med["before"]["ratio"], med["after"]["ratio"], digits=3),
        ]
        print_table(f"[1] median of {rounds} rounds", figures[-3:])

        paths = write_photos(Path(tmp) / "photos", (2 if quick else 6) * b, (640, 480))
        runs = w.interleave("w_end_to_end", rounds, paths=paths, batch=b, workers=args.workers)
        e = {t: median(r["images_per_s"] for r in runs[t]) for t in runs}
        figures.append(Figure(f"[2] end to end, {len(paths)} 640x480 JPEGs, img/s", e["before"], e["after"]))
        print_table(f"[2] median of {rounds} rounds", figures[-1:])

        chosen = [layers[1], layers[len(layers) // 2], layers[-1]] if quick and len(layers) >= 3 else layers
        per_pass = b if info["after"]["device"].startswith("cuda") else min(b, 8)  # as `atlas build` does
        prounds = max(2, rounds - 1)
        runs = w.interleave("w_projections", prounds, layers=chosen, images=2 if quick else 4, per_pass=per_pass,
                            captum_n=2 if quick else 4)
        proj = []
        for layer in chosen:
            ours = {t: median(r["per_layer"][layer]["ours_per_s"] for r in runs[t]) for t in runs}
            theirs = {t: median(r["per_layer"][layer]["captum_per_s"] for r in runs[t]) for t in runs}
            proj.append(Figure(f"[3] {layer}: ours, projections/s", ours["before"], ours["after"]))
            proj.append(Figure(f"[3] {layer}: captum, projections/s (same code)", theirs["before"], theirs["after"]))
        mix = {}  # weighted as bench_projections weighs one run, from the per-layer medians
        for t in runs:
            units = runs[t][0]["per_layer"]
            t_ours = sum(units[layer]["units"] / median(r["per_layer"][layer]["ours_per_s"] for r in runs[t]) for layer in chosen)
            t_theirs = sum(units[layer]["units"] / median(r["per_layer"][layer]["captum_per_s"] for r in runs[t]) for layer in chosen)
            mix[t] = t_theirs / t_ours
        proj.append(Figure("[3] ours / captum, an atlas's mix (target >= 5)", mix["before"], mix["after"], digits=2))
        figures += proj
        print_table(f"[3] projections as `atlas build` computes them, median of {prounds} rounds", proj)

        # The layer catalogue probes the receptive fields of a new input size once and caches them
        # on disk (~/.cache/convscope/layers, shared by both trees): the first process to scan at
        # the memory runs' size would pay that probe's memory alone. Each tree pays it here.
        sizes = args.memory_sizes or ([200, 2000] if quick else [1000, 10000])
        folder = Path(tmp) / "small"
        write_photos(folder, max(sizes), (64, 64), fmt="PNG")
        for t in trees:
            w.call(t.label, "w_warm_memory_input", path=str(next(folder.iterdir())), spec=args.model,
                   device=args.device, input_size=args.memory_input)

        mem: dict = {t.label: {} for t in trees}
        order = [(t, n) for n in sizes for t in (trees if n == sizes[0] else list(trees)[::-1])]
        for t, n in order:  # before, after at the first size; after, before at the last
            mem[t.label][n] = memory_run(args, folder, n, t.env())
        ratios = {t: memory_ratios(mem[t], sizes) for t in mem}
        rows = []
        for n in sizes:
            rows.append(Figure(f"[4] peak RSS scanning {n} images, MiB", mem["before"][n]["peak_kib"] / 1024,
                               mem["after"][n]["peak_kib"] / 1024, "lower", digits=0))
        rows.append(Figure(f"[4] peak RSS {sizes[-1]} / {sizes[0]} (target <= 1.10)", ratios["before"]["peak_ratio"],
                           ratios["after"]["peak_ratio"], "lower", digits=3))
        z = sizes[-1]
        rows.append(Figure(f"[4] img/s scanning {z} 64x64 PNGs", mem["before"][z]["images"] / mem["before"][z]["seconds"],
                           mem["after"][z]["images"] / mem["after"][z]["seconds"], digits=0))
        figures += rows
        print_table(f"[4] memory (fresh process per run, 64x64 PNG, input {args.memory_input}px)", rows)
    print()
    print_table("scan: all figures, after / before", figures)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--memory-input", type=int, default=64, help="model input size for the memory runs (px)")
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=None, metavar=("N1", "N2"),
                        help="images in the two memory runs (default 1000 10000; --quick 200 2000)")
    parser.add_argument("--rounds", type=int, default=None, help="with --before: rounds per figure (default 3)")
    Trees.add_arguments(parser)
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args)
        return
    if two_tree_run(args, globals(), compare):
        return
    torch.set_num_threads(args.threads)
    from convscope.runtime import keep_freed_memory

    keep_freed_memory()  # as convscope's heavy calls do: large freed tensors stay in the heap
    quick = args.quick
    model = prepare_model(args.model, args.device)
    b = args.batch_size
    print(f"model {args.model} on {model.device}, input {model.input_size}, batch {b}, threads {args.threads}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)

    r = bench_overhead(model, b, batches=1 if quick else 2, rounds=2 if quick else 5)
    print(f"[1] scan vs bare forward ({len(r['layers'])} default layers hooked, decoded tensors): "
          f"bare {r['bare_images_per_s']:.1f} img/s, scan {r['scan_images_per_s']:.1f} img/s, "
          f"ratio {r['ratio']:.2f} (target >= 0.9)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(Path(tmp) / "photos", 2 * b if quick else 6 * b, (640, 480))
        e = bench_end_to_end(model, paths, b, args.workers)
        print(f"[2] end to end (decode {e['photo_size']} + scan): {e['images_per_s']:.1f} img/s "
              f"({e['images']} photos in {e['seconds']:.1f} s; {e['images_per_s'] / r['bare_images_per_s']:.2f} of the bare forward)",
              flush=True)

        layers = model.layers.default
        chosen = [layers[1], layers[len(layers) // 2], layers[-1]] if quick and len(layers) >= 3 else layers
        per_pass = b if model.device.type == "cuda" else min(b, 8)  # as `atlas build` does
        p = bench_projections(model, chosen, images=2 if quick else 8, top=9, photos=500, per_pass=per_pass,
                              captum_n=2 if quick else 8)
        for name, v in p["per_layer"].items():
            print(f"    {name:12s} {v['units']:5d} units, {v['per_input']:2d} examples/input: ours {v['ours_per_s']:6.1f}/s  "
                  f"captum {v['captum_per_s']:5.1f}/s  ratio {v['ratio']:5.1f}   one example per input: "
                  f"{v['one_per_input_ratio']:4.1f}   ({v['windowed']}/{v['examples']} on receptive-field windows)")
        print(f"[3] projections/s (deconvnet + guided, as `atlas build` on 500 photos, top 9), ours vs captum one "
              f"at a time, weighted by units per layer (an atlas's mix): ratio {p['atlas_ratio']:.1f} (target >= 5)",
              flush=True)

        sizes = args.memory_sizes or ([200, 2000] if quick else [1000, 10000])
        m = bench_memory(args, Path(tmp) / "small", sizes)
        a, z = m["runs"][sizes[0]], m["runs"][sizes[-1]]
        print(f"[4] peak RSS scanning {sizes[0]} vs {sizes[-1]} images (64x64 PNG, input {args.memory_input}px): "
              f"{a['peak_kib'] / 1024:.0f} MiB vs {z['peak_kib'] / 1024:.0f} MiB (ratio {m['peak_ratio']:.3f}, target <= 1.10); "
              f"growth during the scan {a['growth_kib'] / 1024:.1f} vs {z['growth_kib'] / 1024:.1f} MiB; "
              f"{z['images'] / z['seconds']:.0f} img/s", flush=True)


if __name__ == "__main__":
    main()
