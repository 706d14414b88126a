#!/usr/bin/env python3
"""Data-op benchmark: podium's ops against the reference Python libraries on
the same data, side by side in one run, at equal threads.

- wbf: 5,000 images x 4 models x ~50 boxes; ensemble-boxes 1.0.9
  `weighted_boxes_fusion` image by image (its time excludes reading JSON;
  podium's includes reading and writing the files).
- resize: 1024x1024 PNGs to 512x512 (bicubic, PNG out); Pillow with a process
  pool of the same size, `Image.resize(BICUBIC)` and `save(compress_level=1)`
  (Pillow's fastest PNG setting, comparable to podium's fast compression).
- folds: multilabel, 100,000 rows x 28 labels, 5 folds;
  iterative-stratification's MultilabelStratifiedKFold (reading the CSV
  excluded) against `podium op folds` (including it).

Usage (from the repository root):
    python3 -m venv /tmp/opsvenv && /tmp/opsvenv/bin/pip install ensemble-boxes==1.0.9 iterative-stratification pillow numpy
    cargo build --release
    /tmp/opsvenv/bin/python benches/ops.py [--only wbf resize folds] [--threads 1 2]
"""

import argparse
import concurrent.futures
import csv
import json
import os
import random
import subprocess
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PODIUM = os.path.join(ROOT, "target", "release", "podium")


def podium(args, threads):
    t = time.perf_counter()
    subprocess.run([PODIUM, "op", "-j", str(threads)] + args, check=True, capture_output=True)
    return time.perf_counter() - t


def best(f, repeat):
    return min(f() for _ in range(repeat))


def bench_wbf(d, repeat):
    rng = random.Random(1)
    models = [[] for _ in range(4)]
    for img in range(5000):
        objects = []
        for _ in range(12):
            w, h = rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3)
            objects.append((rng.randrange(3), rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h))
        for m in models:
            for (c, x, y, w, h) in objects:
                for _ in range(rng.choice([3, 4, 5])):
                    j = lambda v: v + rng.gauss(0, 0.01)
                    m.append({"image_id": img, "category_id": c, "bbox": [j(x), j(y), abs(j(w)), abs(j(h))], "score": rng.random()})
    paths = []
    for i, m in enumerate(models):
        p = os.path.join(d, f"m{i}.json")
        with open(p, "w") as f:
            json.dump(m, f)
        paths.append(p)
    n_boxes = sum(len(m) for m in models)

    from ensemble_boxes import weighted_boxes_fusion

    per_image = {}
    for mi, m in enumerate(models):
        for b in m:
            e = per_image.setdefault(b["image_id"], [[[], [], []] for _ in models])
            x, y, w, h = b["bbox"]
            e[mi][0].append([x, y, x + w, y + h])
            e[mi][1].append(b["score"])
            e[mi][2].append(b["category_id"])

    def peer():
        t = time.perf_counter()
        for img, e in per_image.items():
            weighted_boxes_fusion([x[0] for x in e], [x[1] for x in e], [x[2] for x in e], iou_thr=0.55)
        return time.perf_counter() - t

    theirs = best(peer, 1)
    rows = []
    for threads in ARGS.threads:
        ours = best(lambda: podium(["wbf"] + paths + ["-o", os.path.join(d, "fused.json")], threads), repeat)
        rows.append((f"wbf, {n_boxes:,} boxes, 5,000 images x 4 models", threads, ours, theirs if threads == 1 else None, "ensemble-boxes 1.0.9"))
    return rows


def make_png(args):
    path, seed = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:1024, 0:1024]
    img = np.stack([(xx * (0.1 + c * 0.05) + yy * 0.1 + rng.normal(0, 12, (1024, 1024))) % 256 for c in range(3)], axis=-1)
    Image.fromarray(img.astype(np.uint8)).save(path)


def pillow_one(args):
    src, dst = args
    from PIL import Image

    Image.open(src).resize((512, 512), Image.BICUBIC).save(dst, compress_level=1)


def bench_resize(d, repeat, n=64):
    src = os.path.join(d, "png1024")
    os.makedirs(src, exist_ok=True)
    with concurrent.futures.ProcessPoolExecutor() as ex:
        list(ex.map(make_png, [(os.path.join(src, f"{i:04}.png"), i) for i in range(n)]))
    out = os.path.join(d, "pil512")
    os.makedirs(out, exist_ok=True)
    jobs = [(os.path.join(src, f), os.path.join(out, f)) for f in sorted(os.listdir(src))]
    rows = []
    for threads in ARGS.threads:
        def peer():
            t = time.perf_counter()
            if threads == 1:
                for j in jobs:
                    pillow_one(j)
            else:
                with concurrent.futures.ProcessPoolExecutor(threads) as ex:
                    list(ex.map(pillow_one, jobs, chunksize=4))
            return time.perf_counter() - t

        theirs = best(peer, repeat)
        ours = best(lambda: podium(["resize", "--set", "sizes=[512]", src, "-o", os.path.join(d, f"pod512_{time.time_ns()}")], threads), repeat)
        rows.append((f"resize, {n} PNGs 1024² → 512²", threads, ours, theirs, "Pillow " + __import__("PIL").__version__))
    return rows


def bench_folds(d, repeat, n=100_000, labels=28):
    rng = np.random.default_rng(3)
    p = np.maximum(0.4 * 0.8 ** np.arange(labels), 0.003)
    y = (rng.random((n, labels)) < p).astype(np.int8)
    empty = y.sum(axis=1) == 0
    y[empty, rng.integers(0, labels, empty.sum())] = 1
    path = os.path.join(d, "ml.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Id", "Target"])
        for i in range(n):
            w.writerow([f"r{i}", " ".join(map(str, np.nonzero(y[i])[0]))])
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    def peer():
        t = time.perf_counter()
        for _ in MultilabelStratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(np.zeros(n), y):
            pass
        return time.perf_counter() - t

    theirs = best(peer, 1)
    ours = best(lambda: podium(["folds", "--set", "kind=multilabel", "--set", "by=Target", path, "-o", os.path.join(d, "folds.csv")], 1), repeat)
    return [(f"folds multilabel, {n:,} rows x {labels} labels", 1, ours, theirs, "iterative-stratification 0.1.9")]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=["wbf", "resize", "folds"])
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    ARGS = ap.parse_args()
    print(f"podium {subprocess.run([PODIUM, '--version'], capture_output=True, text=True).stdout.strip()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as d:
        rows = []
        for name in ARGS.only:
            rows += globals()[f"bench_{name}"](d, ARGS.repeat)
        print("| case | threads | podium | peer | peer time | ratio |")
        print("|---|---|---|---|---|---|")
        for case, threads, ours, theirs, peer in rows:
            if theirs is None:
                print(f"| {case} | {threads} | {ours:.3f} s | {peer} | (single-threaded) | |")
            else:
                print(f"| {case} | {threads} | {ours:.3f} s | {peer} | {theirs:.3f} s | {theirs / ours:.1f}× |")
