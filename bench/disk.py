"""Bytes per indexed photo, by part, and what a million would weigh (issue 23, "Cost on disk").

    python -m convscope index /work/shared/data/imagenet-samples --out /tmp/disk-dev.index
    python bench/disk.py /tmp/disk-dev.index

Reads a finished index: the size of every file of its folder, the thumbnails' bytes and the
rest of its database, its arrays grouped by what they serve; prints a Markdown table.
"""
from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

GROUPS = {  # array name -> the part it belongs to
    "units": "unit maxima (`units`, `unit_pos`)", "unit_pos": "unit maxima (`units`, `unit_pos`)",
    "embedding": "embedding",
}
OTHER = "classes, postings, class blocks, perceptual hashes, entry arrays"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path)
    args = parser.parse_args()
    root = args.index
    db = root / "index.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        photos = conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        thumbs = conn.execute("SELECT COALESCE(SUM(LENGTH(jpeg)), 0) FROM thumbs").fetchone()[0]
        arrays = root / __import__("json").loads(conn.execute("SELECT value FROM meta WHERE key = 'arrays'").fetchone()[0])
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    parts: dict[str, int] = {"thumbnails (JPEG in `index.sqlite`)": thumbs,
                             "the rest of `index.sqlite` (files, entries, texts, SQL indexes)": db.stat().st_size - thumbs}
    for f in sorted(arrays.glob("*.npy")):
        name = GROUPS.get(f.stem, OTHER)
        parts[name] = parts.get(name, 0) + f.stat().st_size
    print(f"| part | bytes | per photo |\n| --- | ---: | ---: |\n| whole index, {photos} photos | {total:,} | "
          f"{total / photos / 1000:.1f} KB |")
    for name, size in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {size:,} | {size / photos / 1000:.1f} KB |")
    print(f"\n1,000,000 photos: about {total / photos * 1e6 / 1e9:.1f} GB")


if __name__ == "__main__":
    main()
