"""Benchmark of reading text in photos (issue 21, section 3), every figure from one run:

1. engines side by side: RapidOCR (``rapidocr-onnxruntime``, as ``convscope.ocr.read`` runs it,
   without its gate) against Debian's Tesseract (the ``tesseract`` binary, ``--psm 11`` sparse
   text and ``--psm 3`` automatic page layout, words of confidence >= 60), each on one thread:
   word recall and precision, word character error rate and ms per picture on generated signs,
   receipts, screenshots and dev photos with a sign pasted in; ms and false words per photo on
   dev photos without text;
2. the resolution the index must decode at for text: RapidOCR's recall with the picture shrunk to
   a shorter side of 256 (the index's decode size for EfficientNet-Lite0), 512, 768 pixels;
3. gates: the detector alone at a small size (``convscope.ocr.has_text``), its cost and the text
   pictures it lets through, against a gate on the network's classes (text-bearing ImageNet
   classes in the top 5) that would need the forward pass before OCR;
4. matching: how many words drawn on a picture find it, exact and tolerant
   (``convscope.ocr.match``), and how many pictures without the word a query falsely finds;
5. the caps: a 100-megapixel grey scan, time and peak memory of ``read``;
6. index throughput (``Index.build``) on camera-sized photos with the text signal and without.

    python bench/ocr.py                 # about 15 minutes on 2 shared CPU cores
    python bench/ocr.py --quick         # fewer pictures, a smoke test

The dev photos (``--dev``, default ``../shared/data/imagenet-samples``) are used here only, never
by the tests: the ones of animal classes (wnid n01, n02) serve as photos without text.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")   # Tesseract on one thread, as RapidOCR

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from _trees import ROOT, dev_photos_dir  # noqa: E402

sys.path.insert(0, str(ROOT))   # this checkout's convscope, whatever PYTHONPATH says
from convscope import ocr  # noqa: E402

FONTS = [p for p in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                     "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
                     "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
                     "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
                     "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                     "/usr/share/fonts/truetype/liberation/LiberationSerif-Bold.ttf") if Path(p).exists()]
MONO = [p for p in ("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
                    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf") if Path(p).exists()]
SIGN_WORDS = ("HOTEL", "PHARMACY", "BAKERY", "STATION", "MUSEUM", "EXIT", "PARKING", "ENTRANCE", "Café",
              "Library", "Theatre", "Garage", "Market", "Bistro", "Pizzeria", "Laundry", "Florist",
              "Zürich", "Crème", "Brûlée", "Boulangerie", "Gelato", "Harbour", "Platform", "Closed",
              "Open", "Sale", "Welcome", "Bank", "Post", "Office", "Cinema", "Dentist", "Hospital",
              "Airport", "Taxi", "Bus", "Stop", "Beach", "Mountain", "Trail", "Bridge", "Castle",
              "Avenue", "Street", "Road", "Lane", "Plaza", "Square", "Tower", "Garden", "Park", "Zoo",
              "Fresh", "Coffee", "Bagels", "Books", "Records", "Tailor", "Barber", "Bicycles", "Sushi")
ITEMS = ("Coffee", "Bagel", "Croissant", "Milk", "Bread", "Apples", "Cheese", "Butter", "Tomatoes",
         "Pasta", "Olive oil", "Yogurt", "Bananas", "Water", "Tea", "Sandwich", "Salad", "Soup",
         "Chocolate", "Orange juice", "Eggs", "Rice", "Chicken", "Lemons")
STORES = ("CORNER MARKET", "GREEN GROCER", "CITY BAKERY", "FRESH FOODS", "HARBOUR CAFE")
UI_WORDS = ("Settings", "Account", "Privacy", "Display", "Network", "Bluetooth", "Battery", "Storage",
            "Updates", "Search", "Notifications", "Security", "Language", "Keyboard", "Sound",
            "Wallpaper", "Profile", "Download", "Upload", "Messages", "Calendar", "Contacts", "Photos")
PROSE = ("the quick brown fox jumps over the lazy dog while seven wizards quietly judge every "
         "boxing match near the old harbour bridge and a friendly baker sells fresh bread").split()
#: ImageNet classes whose photos often hold text: the class gate lets a photo through where one
#: of them is in the network's top 5.
TEXT_CLASSES = {916, 917, 918, 919, 921, 922, 549, 781, 664, 782, 692, 478, 530, 454, 860, 865, 424,
                498, 582, 886, 707, 685, 446, 681, 527, 620, 851, 480, 704, 720, 737, 440, 907, 610,
                769, 867, 675, 734, 415, 509, 788, 467, 624, 779, 874, 569, 590, 487, 631, 838, 585}


def font(rng, size, mono=False):
    pool = MONO if mono else FONTS
    return ImageFont.truetype(rng.choice(pool), size) if pool else ImageFont.load_default(size=size)


def _color(rng, dark):
    lo, hi = (0, 90) if dark else (170, 255)
    return tuple(rng.randint(lo, hi) for _ in range(3))


def plate(rng, words, size):
    """A sign: one or two lines of words on a coloured plate with a border."""
    f = font(rng, size)
    lines = [words[:1], words[1:]] if len(words) > 2 else [words]
    lines = [" ".join(line) for line in lines if line]
    dark = rng.random() < 0.5
    ink, ground = _color(rng, not dark), _color(rng, dark)
    widths = [f.getbbox(line)[2] for line in lines]
    pad = size // 2
    img = Image.new("RGB", (max(widths) + 2 * pad, len(lines) * int(size * 1.3) + 2 * pad), ground)
    d = ImageDraw.Draw(img)
    d.rectangle((3, 3, img.width - 4, img.height - 4), outline=ink, width=max(2, size // 12))
    for k, line in enumerate(lines):
        d.text((pad, pad + k * int(size * 1.3)), line, font=f, fill=ink)
    return img


def sign(rng):
    words = rng.sample(SIGN_WORDS, rng.randint(1, 3))
    w, h = 1000, 750
    bg = Image.new("RGB", (w, h), _color(rng, rng.random() < 0.5))
    noise = np.asarray(bg, np.int16) + np.random.default_rng(rng.randint(0, 1 << 30)).integers(-25, 25, (h, w, 3))
    bg = Image.fromarray(noise.clip(0, 255).astype(np.uint8))
    p = plate(rng, words, rng.randint(40, 90)).rotate(rng.uniform(-6, 6), expand=True, fillcolor=None)
    p.thumbnail((int(w * 0.9), int(h * 0.8)))
    bg.paste(p, (rng.randint(0, w - p.width), rng.randint(0, h - p.height)))
    return bg, words


def receipt(rng):
    f = font(rng, rng.randint(20, 26), mono=True)
    store = rng.choice(STORES)
    items = rng.sample(ITEMS, rng.randint(5, 9))
    lines = [store, "12 Harbour Road", ""]
    total = 0.0
    for item in items:
        price = rng.randint(50, 1500) / 100
        total += price
        lines.append(f"{item:<16}{price:>7.2f}")
    lines += ["", f"{'TOTAL':<16}{total:>7.2f}", "Thank you"]
    paper = Image.new("RGB", (460, 40 + 34 * len(lines)), (245, 243, 236))
    d = ImageDraw.Draw(paper)
    for k, line in enumerate(lines):
        d.text((20, 20 + 34 * k), line, font=f, fill=(30, 30, 35))
    paper = paper.rotate(rng.uniform(-4, 4), expand=True, fillcolor=(60, 45, 35))
    bg = Image.new("RGB", (paper.width + 200, paper.height + 160), (60, 45, 35))
    bg.paste(paper, (100, 80))
    return bg, [w for line in lines for w in line.split()]


def screenshot(rng):
    img = Image.new("RGB", (1280, 800), (250, 250, 250))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, 1280, 48), fill=(45, 55, 72))
    title = rng.sample(UI_WORDS, 2)
    d.text((20, 10), " ".join(title), font=font(rng, 22), fill="white")
    menu = rng.sample(UI_WORDS, 6)
    d.rectangle((0, 48, 260, 800), fill=(236, 238, 242))
    for k, word in enumerate(menu):
        d.text((24, 80 + 52 * k), word, font=font(rng, 20), fill=(20, 20, 20))
    words = title + menu
    f = font(rng, rng.randint(16, 20))
    for k in range(rng.randint(4, 8)):
        line = rng.sample(PROSE, 7)
        d.text((300, 90 + 40 * k), " ".join(line), font=f, fill=(40, 40, 40))
        words += line
    return img, words


def photo_sign(rng, photo):
    bg = Image.open(photo).convert("RGB").resize((1000, 750), Image.Resampling.BICUBIC)
    words = rng.sample(SIGN_WORDS, rng.randint(1, 2))
    p = plate(rng, words, rng.randint(36, 64)).rotate(rng.uniform(-8, 8), expand=True, fillcolor=None)
    p.thumbnail((rng.randint(250, 450), 300))
    bg.paste(p, (rng.randint(0, bg.width - p.width), rng.randint(0, bg.height - p.height)))
    return bg, words


def pictures(dev: Path, quick: bool):
    rng = random.Random(21)
    n = 6 if quick else 1
    photos = sorted(p for p in dev.glob("*.JPEG") if p.name[:3] in ("n01", "n02"))
    no_text, hosts = photos[::2][: 50 // n], photos[1::2]
    sets = {
        "signs": [sign(rng) for _ in range(24 // n)],
        "receipts": [receipt(rng) for _ in range(10 // n)],
        "screenshots": [screenshot(rng) for _ in range(8 // n)],
        "photo+sign": [photo_sign(rng, rng.choice(hosts)) for _ in range(24 // n)],
    }
    return sets, [Image.open(p).convert("RGB") for p in no_text]


# --- engines ----------------------------------------------------------------------------------

def rapid(image):
    return [w.text for w in ocr.read(image, gate_side=0).words]


def tesseract(psm):
    def run(image):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        out = subprocess.run(["tesseract", "stdin", "stdout", "--psm", str(psm), "tsv"], input=buf.getvalue(),
                             capture_output=True, check=True).stdout.decode()
        rows = list(csv.reader(io.StringIO(out), delimiter="\t", quoting=csv.QUOTE_NONE))
        return [r[11] for r in rows[1:] if len(r) > 11 and r[11].strip() and float(r[10]) >= 60]
    return run


def score(truth, found):
    """Word recall and precision (normalized words, multisets) and the character error rate of
    each drawn word against its closest recognized word (edit operations per character)."""
    t = [ocr.normalize(w) for w in truth if ocr.normalize(w)]
    f = [ocr.normalize(w) for w in found if ocr.normalize(w)]
    left = list(f)
    hits = 0
    for w in t:
        if w in left:
            left.remove(w)
            hits += 1
    errors = sum(min((ocr.distance(w, g, len(w)) for g in f), default=len(w)) for w in t)
    return hits, len(t), len(f) - len(left), len(f), errors, sum(map(len, t))


def timed(fn, image):
    start = time.perf_counter()
    out = fn(image)
    return out, (time.perf_counter() - start) * 1000


def engines_part(sets, no_text, engines):
    print("\n## 1. Engines (one thread each)\n")
    print("| set | pictures | engine | word recall | word precision | char error rate | ms / picture |")
    print("|---|---:|---|---:|---:|---:|---:|")
    found = {}
    for name, items in sets.items():
        for ename, fn in engines.items():
            totals = np.zeros(6)
            ms = []
            for k, (image, truth) in enumerate(items):
                words, t = timed(fn, image)
                ms.append(t)
                totals += score(truth, words)
                found[ename, name, k] = words
            h, nt, ph, nf, err, chars = totals
            print(f"| {name} | {len(items)} | {ename} | {h / nt:.3f} | {ph / max(nf, 1):.3f} | {err / chars:.3f} | {np.mean(ms):.0f} |")
    print("\n| photos without text | photos | engine | false words / photo | photos with any word | ms / photo |")
    print("|---|---:|---|---:|---:|---:|")
    for ename, fn in engines.items():
        counts, ms = [], []
        for image in no_text:
            words, t = timed(fn, image)
            counts.append(len(words))
            ms.append(t)
            found[ename, "no text", len(counts) - 1] = words
        print(f"| dev photos (500x375) | {len(no_text)} | {ename} | {np.mean(counts):.2f} | {sum(c > 0 for c in counts)} | {np.mean(ms):.0f} |")
    return found


def shrink(image, short, up=False):
    """``image`` with a shorter side of ``short`` pixels, or as it is where it is smaller (``up``: enlarged)."""
    s = short / min(image.size)
    if s >= 1 and not up:
        return image
    return image.resize((round(image.width * s), round(image.height * s)), Image.Resampling.BICUBIC)


def resolution_part(sets):
    print("\n## 2. RapidOCR's word recall by the shorter side it is given\n")
    sides = (256, 512, 768)
    print("| set | " + " | ".join(f"{s} px" for s in sides) + " | as drawn |")
    print("|---|" + "---:|" * (len(sides) + 1))
    for name, items in sets.items():
        cells = []
        for side in sides + (None,):
            hits = total = 0
            for image, truth in items:
                h, t, *_ = score(truth, rapid(shrink(image, side) if side else image))
                hits, total = hits + h, total + t
            cells.append(f"{hits / total:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def gate_part(sets, no_text, all_dev, quick):
    print("\n## 3. Gates: which pictures go on to the recognizer\n")
    print("The detector alone at a small size, on pictures as an index would decode them at a shorter side of 512 "
          "(the dev photos, 500x375, enlarged to it, as a camera's photo would be decoded).\n")
    text_images = [shrink(image, 512) for items in sets.values() for image, _ in items]
    plain = [shrink(image, 512, up=True) for image in no_text]
    counts = [(name, len(items)) for name, items in sets.items()] + [("no text", len(plain))]
    print("| gate | ms / picture | " + " | ".join(f"{name} let through" for name, _ in counts) + " |")
    print("|---|---:|" + "---:|" * len(counts))
    for side, pages in ((192, False), (256, False), (320, False), (256, True), (320, True)):
        ms, passed = [], []
        for image in text_images + plain:
            ok, t = timed(lambda im: ocr.has_text(im, side, pages=pages), image)
            ms.append(t)
            passed.append(ok)
        cells, k = [], 0
        for _, n in counts:
            cells.append(f"{sum(passed[k:k + n])}/{n}")
            k += n
        print(f"| detector at {side} px{' or page-like' if pages else ''} | {np.mean(ms):.1f} | " + " | ".join(cells) + " |")
    print("\nWhat ``read`` costs end to end (median ms), without and with the gate, by decode size.\n")
    print("| shorter side | gate | ms / photo without text | ms / text picture | " + " | ".join(f"{name} recall" for name in sets) + " |")
    print("|---:|---|---:|---:|" + "---:|" * len(sets))
    for short in (256, 512):
        # gate and no gate alternate picture by picture, and medians: the machine is shared
        plain_ms = {0: [], ocr.GATE_SIDE: []}
        text_ms = {0: [], ocr.GATE_SIDE: []}
        hits = {(0, name): 0 for name in sets} | {(ocr.GATE_SIDE, name): 0 for name in sets}
        totals = dict.fromkeys(sets, 0)
        for image in no_text:
            for gate in plain_ms:
                plain_ms[gate].append(timed(lambda im: ocr.read(im, gate_side=gate), shrink(image, short, up=True))[1])
        for name, items in sets.items():
            for image, truth in items:
                for gate in text_ms:
                    reading, t = timed(lambda im: ocr.read(im, gate_side=gate), shrink(image, short))
                    text_ms[gate].append(t)
                    h, n, *_ = score(truth, [w.text for w in reading.words])
                    hits[gate, name] += h
                totals[name] += n
        for gate in plain_ms:
            print(f"| {short} | {'none' if not gate else f'{gate} px or page-like'} | {np.median(plain_ms[gate]):.1f} | "
                  f"{np.median(text_ms[gate]):.0f} | " + " | ".join(f"{hits[gate, name] / totals[name]:.3f}" for name in sets) + " |")
    print()
    print("| class gate | ms / picture | text pictures let through | photos without text let through |")
    print("|---|---:|---:|---:|")

    import torch
    from convscope.models import load_model
    model = load_model()
    torch.set_num_threads(1)

    def top5(images):
        out = []
        with torch.no_grad():
            for image in images:
                probs = model(model.transform(image).unsqueeze(0)).softmax(-1)[0]
                out.append(set(probs.topk(5).indices.tolist()))
        return out

    start = time.perf_counter()
    text_top = top5(text_images)
    plain_top = top5(plain)
    dev_top = top5([Image.open(p).convert("RGB") for p in all_dev])
    ms = (time.perf_counter() - start) * 1000 / (len(text_top) + len(plain_top) + len(dev_top))
    through = sum(bool(t & TEXT_CLASSES) for t in text_top)
    by_set, k = [], 0
    for name, items in sets.items():
        by_set.append(f"{name} {sum(bool(t & TEXT_CLASSES) for t in text_top[k:k + len(items)])}/{len(items)}")
        k += len(items)
    print(f"| network's top 5 has a text class ({len(TEXT_CLASSES)} classes) | {ms:.1f} (the forward pass, paid anyway) "
          f"| {through}/{len(text_top)} ({', '.join(by_set)}) | {sum(bool(t & TEXT_CLASSES) for t in plain_top)}/{len(plain)} "
          f"(all {len(dev_top)} dev photos: {sum(bool(t & TEXT_CLASSES) for t in dev_top)}) |")


def matching_part(sets, found):
    print("\n## 4. Matching a query word against the recognized words (RapidOCR)\n")
    pictures = [(name, k, truth) for name, items in sets.items() for k, (_, truth) in enumerate(items)]
    no_text = [key for key in found if key[0] == "rapidocr" and key[1] == "no text"]
    print("| matching | queries | find their picture | pictures falsely found (of all query x picture pairs without the word) |")
    print("|---|---:|---:|---:|")
    for tolerant in (False, True):
        queries = hits = false = pairs = 0
        for name, k, truth in pictures:
            for query in {ocr.normalize(w) for w in truth if len(ocr.normalize(w)) >= 3}:
                queries += 1
                hits += bool(ocr.match(query, found["rapidocr", name, k], tolerant=tolerant))
                for other_name, j, other in pictures:
                    if query not in {ocr.normalize(w) for w in other}:
                        pairs += 1
                        false += bool(ocr.match(query, found["rapidocr", other_name, j], tolerant=tolerant))
                for key in no_text:
                    pairs += 1
                    false += bool(ocr.match(query, found[key], tolerant=tolerant))
        print(f"| {'tolerant (1 edit at 4-7 letters, 2 beyond)' if tolerant else 'exact'} | {queries} | "
              f"{hits} ({hits / queries:.3f}) | {false} of {pairs} ({false / pairs:.4f}) |")


def caps_part():
    print("\n## 5. Caps\n")
    scan = Image.new("L", (10_000, 10_000), 255)
    d = ImageDraw.Draw(scan)
    f = ImageFont.truetype(FONTS[0], 400) if FONTS else ImageFont.load_default(size=400)
    d.text((800, 1000), "INVOICE 2021", font=f, fill=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reading, ms = timed(ocr.read, scan)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"100-megapixel grey scan (95 MiB): {ms:.0f} ms, words {[w.text for w in reading.words]}, downscaled "
          f"{reading.downscaled}; this process's peak RSS {before / 1024:.0f} MiB before reading it, "
          f"{after / 1024:.0f} MiB after (``--only caps``: a process that did nothing else)")


def throughput_part(dev, quick, rounds):
    """Index.build over camera-sized copies of dev photos (2000x1500 JPEG), with the text signal
    in the build (``text=True``: its entry runs in the decoding workers, its words are stored in
    the ``texts`` table) and without (``text=False``), side by side, alternating."""
    import tempfile

    from convscope.index import Index, signals
    from convscope.index.signals.base import Signal
    from convscope.index.signals.text import Text
    from convscope.models import load_model

    class Decode512(Signal):   # the text signal's decode size, without reading text
        name = "decode512"
        min_size = Text.min_size

    n = 32 if quick else 120
    model = load_model()
    base = signals.SIGNALS
    print(f"\n## 6. Index throughput, {n} photos of 2000x1500 (dev photos enlarged), default workers\n")
    print(f"Best of {rounds} rounds, the three builds alternating within a round.\n")
    print("| build | seconds | photos / s | photos with words |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "photos")
        folder.mkdir()
        for p in sorted(dev.glob("*.JPEG"))[:n]:
            Image.open(p).convert("RGB").resize((2000, 1500), Image.Resampling.BICUBIC).save(folder / f"{p.stem}.jpg", quality=90)
        runs = (("without text", base, False), ("without text, decoded at the text's 512", base + (Decode512(),), False),
                ("with text", base, True))
        best = {}
        for _round, (name, chosen, text) in ((r, run) for r in range(rounds) for run in runs):
            worded = []

            class Count(Signal):   # counts the entries that came back with words
                name = "count"

                def rows(self, features, entries):
                    worded.extend(bool(e.get("text")) for e in entries)
                    return {}

            signals.SIGNALS = chosen + (Count(),)
            try:
                start = time.perf_counter()
                out = Path(tmp, name.replace(" ", "_"))
                shutil.rmtree(out, ignore_errors=True)
                Index.build(model, [folder], out, progress=False, text=text)
                took = time.perf_counter() - start
            finally:
                signals.SIGNALS = base
            if took < best.get(name, (float("inf"),))[0]:
                best[name] = (took, sum(worded))
        for name, _, _ in runs:
            took, worded = best[name]
            print(f"| {name} | {took:.1f} | {n / took:.1f} | {worded if 'with text' in name else '-'} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dev", type=Path, default=dev_photos_dir())
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=2, help="index builds of each kind (throughput: the best)")
    parser.add_argument("--only", nargs="*", default=["engines", "resolution", "gate", "matching", "caps", "throughput"])
    args = parser.parse_args()
    if ocr.available():
        sys.exit(ocr.available())
    sets, no_text = pictures(args.dev, args.quick)
    engines = {"rapidocr": rapid}
    if shutil.which("tesseract"):
        engines |= {"tesseract psm 11": tesseract(11), "tesseract psm 3": tesseract(3)}
    else:
        print("tesseract: not installed (apt-get install -y tesseract-ocr), left out")
    ocr.read(sets["signs"][0][0])   # load the engine before timing
    print(f"OCR benchmark: {sum(map(len, sets.values()))} generated pictures with text, {len(no_text)} dev photos "
          f"without text; {os.cpu_count()} CPU cores")
    found = engines_part(sets, no_text, engines) if "engines" in args.only or "matching" in args.only else {}
    if "resolution" in args.only:
        resolution_part(sets)
    if "gate" in args.only:
        all_dev = sorted(args.dev.glob("*.JPEG"))[:: 6 if args.quick else 1]
        gate_part(sets, no_text, all_dev, args.quick)
    if "matching" in args.only:
        matching_part(sets, found)
    if "caps" in args.only:
        caps_part()
    if "throughput" in args.only:
        throughput_part(args.dev, args.quick, args.rounds)


if __name__ == "__main__":
    main()
