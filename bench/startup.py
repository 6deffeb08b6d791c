"""Start-up time of whole CLI commands: `convscope --help`, a one-photo classify and a one-step
featvis, each run as a fresh process, in turn with the same command run from a baseline checkout
(``--baseline DIR``: a `git worktree` of an older commit, put first on PYTHONPATH).

    git worktree add /tmp/before <commit>
    python bench/startup.py --baseline /tmp/before --runs 7

Prints, per command, the median (min-max) wall and CPU seconds of this checkout and of the
baseline, and the median of the paired ratios (pairing keeps the ratio fair when the machine's
speed drifts). The photo is scikit-image's chelsea, written to a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(tmp: Path, old_spelling: bool) -> dict[str, list[str]]:
    layer = "--layer" if old_spelling else "--layers"
    return {
        "convscope --help": ["--help"],
        "convscope classify one.jpg": ["classify", str(tmp / "one.jpg")],
        "convscope featvis --steps 1": ["featvis", layer, "blocks.2", "--units", "0", "--steps", "1",
                                        "--out", str(tmp / "fv")],
    }


def timed(args: list[str], pythonpath: str, cwd: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of ``python -m convscope ARGS`` in
    ``cwd`` (not a checkout: ``-m`` puts the current folder ahead of PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "convscope", *args], env=env, check=True, cwd=cwd,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="checkout of the commit to compare with")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    import PIL.Image
    import skimage.data

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        PIL.Image.fromarray(skimage.data.chelsea()).save(tmp / "one.jpg")
        ours, theirs = commands(tmp, False), commands(tmp, True)
        print(f"{'command':30s} {'':9s} {'wall s':>18s} {'cpu s':>18s}")
        for name in ours:
            timed(ours[name], str(ROOT), tmp), timed(theirs[name], args.baseline, tmp)  # warm-up: file caches
            a, b = [], []
            for _ in range(args.runs):
                a.append(timed(ours[name], str(ROOT), tmp))
                b.append(timed(theirs[name], args.baseline, tmp))
            for label, rows in (("this", a), ("baseline", b)):
                print(f"{name:30s} {label:9s} {spread([r[0] for r in rows]):>18s} {spread([r[1] for r in rows]):>18s}")
            ratio_wall = statistics.median(x[0] / y[0] for x, y in zip(a, b))
            ratio_cpu = statistics.median(x[1] / y[1] for x, y in zip(a, b))
            print(f"{name:30s} {'ratio':9s} {ratio_wall:18.3f} {ratio_cpu:18.3f}")


if __name__ == "__main__":
    main()
