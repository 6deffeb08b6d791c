"""Occlusion maps per second: convscope.explain.occlusion against captum's Occlusion.

Same model (the default, EfficientNet-Lite0), same image (scikit-image's chelsea, the model's
own preprocessing), same square (window, stride), same occluder (zero after normalization, the
model's mean colour) and the same target (the top class). captum gets its best
``perturbations_per_eval`` of a few tried (the fastest of each round counts); convscope gets its
default batch size. Each contender runs once per round, back to back, for ``--repeats`` rounds;
the headline ratio is the median of the rounds' ratios (the machine may be shared). For the breakdown it also times convscope without the split (plain full passes) and
captum's best setting given a channels-last input (convscope runs its CPU batches channels-last).
The maps must agree: captum's per-pixel attribution is the mean, over the squares
covering a pixel, of (unoccluded - occluded) probability, which we rebuild from convscope's
probability map and compare (max abs diff printed).

    python bench/explain.py [--window 48] [--stride 16] [--repeats 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def captum_equivalent(prob_map: np.ndarray, p0: float, size: tuple[int, int], window: int, stride: int) -> np.ndarray:
    """captum's Occlusion attribution (H, W) rebuilt from a probability map over square positions."""
    H, W = size
    total = np.zeros((H, W))
    count = np.zeros((H, W))
    for i in range(prob_map.shape[0]):
        for j in range(prob_map.shape[1]):
            y, x = i * stride, j * stride
            total[y:y + window, x:x + window] += p0 - prob_map[i, j]
            count[y:y + window, x:x + window] += 1
    return total / np.maximum(count, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=48)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-eval", default="16,32,64", help="captum perturbations_per_eval values to try")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import skimage.data
    from captum.attr import Occlusion

    from convscope import load_model
    from convscope.explain import occlusion
    from convscope.explain._common import prepare

    model = load_model(device="cpu")
    image = skimage.data.chelsea()
    x, _, _ = prepare(model, image)
    with torch.inference_mode():
        p = torch.softmax(model.module(x), dim=1)
    target = int(p.argmax())
    p0 = float(p[0, target])
    occlusion(model, image, window=args.window, stride=args.stride, target=target)  # warm-up, layer geometry cache

    def forward(inp):
        return torch.softmax(model.module(inp), dim=1)

    ppes = [int(v) for v in args.per_eval.split(",")]

    def run_captum(inp, ppe):
        t = time.perf_counter()
        with torch.no_grad():
            out = Occlusion(forward).attribute(
                inp, sliding_window_shapes=(3, args.window, args.window), strides=(3, args.stride, args.stride),
                baselines=0.0, target=target, perturbations_per_eval=ppe,
            )
        return time.perf_counter() - t, out

    # Interleaved rounds: each round times every contender once, back to back, so a round's
    # ratios compare runs that saw the same load; the median round ratio is the headline.
    rounds = []
    result = plain_result = attr = None
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for _ in range(args.repeats):
        row = {}
        t = time.perf_counter()
        result = occlusion(model, image, window=args.window, stride=args.stride, target=target)
        row["ours"] = time.perf_counter() - t
        t = time.perf_counter()
        plain_result = occlusion(model, image, window=args.window, stride=args.stride, target=target, split=None)
        row["plain"] = time.perf_counter() - t
        for ppe in ppes:
            row[ppe], attr = run_captum(x, ppe)
        best = min(ppes, key=lambda k: row[k])
        row["best_ppe"] = best
        row["captum_cl"], _ = run_captum(x_cl, best)
        rounds.append(row)

    def med(values):
        return float(np.median(values))

    rebuilt = captum_equivalent(result.probability, p0, tuple(x.shape[2:]), args.window, args.stride)
    diff = float(np.abs(rebuilt - attr[0, 0].numpy()).max())
    n = result.probability.size
    fmt = lambda key: ", ".join(f"{r[key]:.2f}" for r in rounds)
    print(f"model {model.spec}, chelsea {tuple(x.shape[2:])}, window {args.window}, stride {args.stride}, "
          f"{n} positions, target {target} ({model.label(target)}), {args.threads} threads, {args.repeats} rounds")
    print(f"convscope occlusion (split at {result.split}): s per map by round: {fmt('ours')}")
    print(f"convscope occlusion, split=None (full passes): {fmt('plain')}; max abs diff to the split's map "
          f"{float(np.abs(plain_result.probability - result.probability).max()):.1e}")
    for ppe in ppes:
        print(f"captum Occlusion perturbations_per_eval={ppe}: {fmt(ppe)}")
    print(f"captum best per round, channels-last input: {fmt('captum_cl')}")
    print(f"max abs diff of captum's attribution vs convscope's map: {diff:.2e}")
    best = [min(r[k] for k in ppes) for r in rounds]
    print(f"median maps/s: convscope {1 / med([r['ours'] for r in rounds]):.3f}, captum best {1 / med(best):.3f}")
    print(f"breakdown (median of round ratios): split vs full passes {med([r['plain'] / r['ours'] for r in rounds]):.2f}x; "
          f"captum channels-last / convscope {med([r['captum_cl'] / r['ours'] for r in rounds]):.2f}x")
    print(f"ratio (captum best time / convscope time, median of rounds): {med([b / r['ours'] for b, r in zip(best, rounds)]):.2f}x")


if __name__ == "__main__":
    main()
