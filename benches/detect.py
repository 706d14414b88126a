#!/usr/bin/env python3
"""Detection: podium's FCOS (`task = "detect"`) against torchvision's FCOS with the
same backbone (resnet18, random init, batch norm training), feature pyramid (C3–C5 →
P3–P5, P6 and P7 from P5, `--fpn` channels), head (4 convs per tower, group norm),
loss, image size, batch size, optimizer (AdamW, cosine per batch), epochs, thread count
and data, in one run.

    /tmp/torchvenv/bin/pip install torch torchvision
    cargo build --release
    /tmp/torchvenv/bin/python benches/detect.py [--threads 2] [--epochs 12] [--fpn 128]

The data is `synth` detect (1 to 4 shapes of 3 classes per 64-pixel image, COCO
labels); fold 0 of 5 validates. Quality: each side's best epoch's validation COCO
mAP50 and mAP (both scored by `podium op evaluate`, which equals pycocotools).
Speed: training images/s over 2 epochs without validation (podium: `fold = "all"`,
its `train_images_per_s`), and inference ms/image over the 100 test images (podium:
`predict`'s `ms_per_image`, decoding and writing included; torchvision: eval mode on
tensors in memory), medians of three. torchvision's transform is told the images'
own size (no resize) and ImageNet's normalization, as podium's; score threshold
0.05, NMS 0.6, 100 detections per image on both sides. No augmentation.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PODIUM = os.environ.get("PODIUM_BIN", os.path.join(ROOT, "target", "release", "podium"))
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def podium(args, cwd):
    r = subprocess.run([PODIUM, "op", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"podium {' '.join(args)}: {r.stderr}")


def model(classes, fpn):
    body = torchvision.models.resnet18()
    bb = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], fpn,
                         extra_blocks=LastLevelP6P7(fpn, fpn))
    head = FCOSHead(fpn, 1, classes, num_convs=4)
    return FCOS(bb, classes, min_size=64, max_size=64, image_mean=MEAN, image_std=STD, head=head,
                score_thresh=0.05, nms_thresh=0.6, detections_per_img=100)


def load(d, coco, ids):
    by_name = {im["file_name"][:-4]: im["id"] for im in coco["images"]}
    anns = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    xs, ts = [], []
    for i in ids:
        img = np.asarray(Image.open(f"{d}/data/train_images/{i}.png").convert("RGB"), dtype=np.float32) / 255
        xs.append(torch.tensor(img.transpose(2, 0, 1)))
        a = anns.get(by_name[i], [])
        boxes = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (x["bbox"] for x in a)]
        ts.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                   "labels": torch.tensor([x["category_id"] for x in a], dtype=torch.int64)})
    return xs, ts


def prepare(d, n):
    """In `d`: synth detect data (`n` training images of 64², 3 classes), 5 folds, and
    `val_gt.json` (fold 0's COCO ground truth). Returns the COCO training set, the training
    and validation image ids, and each id's COCO image id."""
    podium(["synth", "--set", "task=detect", "--set", f"n_train={n}", "--set", "n_test=100",
            "--set", "size=64", "--set", "classes=3", "--set", "seed=3", "-o", "data"], d)
    podium(["folds", "--set", "k=5", "data/train.csv", "-o", "folds.csv"], d)
    rows = [l.split(",") for l in open(f"{d}/folds.csv").read().split()[1:]]
    train_ids = [i for i, f in rows if f != "0"]
    val_ids = [i for i, f in rows if f == "0"]
    coco = json.load(open(f"{d}/data/train_coco.json"))
    val_names = set(val_ids)
    val_gt = dict(coco)
    val_gt["images"] = [im for im in coco["images"] if im["file_name"][:-4] in val_names]
    keep = {im["id"] for im in val_gt["images"]}
    val_gt["annotations"] = [x for x in coco["annotations"] if x["image_id"] in keep]
    json.dump(val_gt, open(f"{d}/val_gt.json", "w"))
    by_name = {im["file_name"][:-4]: im["id"] for im in coco["images"]}
    return coco, train_ids, val_ids, by_name


def train_torchvision(m, x, t, epochs, lr, bs, evaluate):
    """Trains torchvision detector `m` on images `x` with targets `t` as podium trains
    (AdamW, weight decay 1e-4, cosine schedule per step, batches of `bs`, a last batch of
    one dropped), calling `evaluate(epoch)` after each epoch for a (mAP50, mAP) pair.
    Returns the best pair and the training images per second (evaluation left out)."""
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    best = (0.0, 0.0)
    train_secs = 0.0
    for epoch in range(epochs):
        m.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(x)).tolist()
        for b in range(0, len(x), bs):
            j = perm[b:b + bs]
            if len(j) < 2:
                continue
            losses = m([x[i] for i in j], [t[i] for i in j])
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        train_secs += time.perf_counter() - t0
        best = max(best, evaluate(epoch))
    return best, len(x) * epochs / train_secs


def detect(m, xs, bs):
    m.eval()
    out = []
    with torch.no_grad():
        for b in range(0, len(xs), bs):
            out.extend(m(xs[b:b + bs]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--fpn", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.002)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    bs = 16
    with tempfile.TemporaryDirectory() as d:
        coco, train_ids, val_ids, by_name = prepare(d, a.n)
        common = ["--set", "task=detect", "--set", "arch=resnet18", "--set", f"fpn_channels={a.fpn}",
                  "--set", "head_convs=4", "--set", f"batch_size={bs}", "--set", f"lr={a.lr}", "-j", str(a.threads)]
        podium(["train", *common, "--set", "fold=0", "--set", f"epochs={a.epochs}",
                "data/train_images", "data/train_coco.json", "folds.csv", "-o", "q"], d)
        pm = json.load(open(f"{d}/q/metrics.json"))

        x, t = load(d, coco, train_ids)
        xv, _ = load(d, coco, val_ids)
        m = model(3, a.fpn)

        def evaluate(epoch):
            dets = []
            for i, o in zip(val_ids, detect(m, xv, bs)):
                for box, s, l in zip(o["boxes"].tolist(), o["scores"].tolist(), o["labels"].tolist()):
                    dets.append({"image_id": by_name[i], "category_id": l, "score": s,
                                 "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
            json.dump(dets, open(f"{d}/tv_{epoch}.json", "w"))
            podium(["evaluate", "--set", 'metric=["coco_map50", "coco_map"]', "val_gt.json",
                    f"tv_{epoch}.json", "-o", f"tv_{epoch}_m.json"], d)
            r = json.load(open(f"{d}/tv_{epoch}_m.json"))
            return r["coco_map50"], r["coco_map"]

        best, tv_speed = train_torchvision(m, x, t, a.epochs, a.lr, bs, evaluate)

        podium(["train", *common, "--set", "fold=all", "--set", "epochs=2",
                "data/train_images", "data/train_coco.json", "-o", "s"], d)
        p_speed = json.load(open(f"{d}/s/metrics.json"))["train_images_per_s"]
        test = sorted(p[:-4] for p in os.listdir(f"{d}/data/test_images"))
        xt = [torch.tensor(np.asarray(Image.open(f"{d}/data/test_images/{i}.png").convert("RGB"),
                                      dtype=np.float32).transpose(2, 0, 1) / 255) for i in test]
        pt, tt = [], []
        for r in range(3):
            podium(["predict", "--set", f"batch_size={bs}", "-j", str(a.threads), "q/best.safetensors",
                    "data/test_images", "-o", f"p{r}"], d)
            pt.append(json.load(open(f"{d}/p{r}/metrics.json"))["ms_per_image"])
            t0 = time.perf_counter()
            detect(m, xt, bs)
            tt.append((time.perf_counter() - t0) * 1000 / len(xt))
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {a.threads} threads, resnet18 "
          f"FCOS, pyramid {a.fpn} channels, {a.n} images of 64², {a.epochs} epochs")
    print("| case | podium | torchvision FCOS | podium against torchvision |")
    print("|---|---|---|---|")
    print(f"| validation mAP50 (best epoch) | {pm['coco_map50']:.4f} | {best[0]:.4f} | {pm['coco_map50'] - best[0]:+.4f} |")
    print(f"| validation mAP | {pm['coco_map']:.4f} | {best[1]:.4f} | {pm['coco_map'] - best[1]:+.4f} |")
    print(f"| train images/s | {p_speed:.1f} | {tv_speed:.1f} | {p_speed / tv_speed:.2f}× |")
    p, t = statistics.median(pt), statistics.median(tt)
    print(f"| predict, ms/image | {p:.2f} | {t:.2f} | {t / p:.2f}× |")


if __name__ == "__main__":
    main()
