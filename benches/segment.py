#!/usr/bin/env python3
"""Semantic segmentation: podium's U-Net (`task = "segment"`) against
segmentation_models_pytorch's `Unet` with the same encoder, decoder
(decoder_channels (256, 128, 64, 32, 16) = podium's `decoder_width = 16`), loss
(BCE + Dice), optimizer (AdamW, cosine per batch), batch size, image size, epochs,
thread count and data, in one run.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch timm segmentation-models-pytorch
    cargo build --release
    /tmp/torchvenv/bin/python benches/segment.py [--threads 2] [--arch resnet18] [--epochs 10]

The data is `synth` segment (1 to 4 shapes of 3 classes per 64-pixel image,
class-index masks); fold 0 of 5 validates. Quality: each side trains `--epochs` epochs
and reports its best epoch's validation Dice and IoU, both as podium's `dice` and
`iou` (per image and class at 0.5, 1 where prediction and truth are empty, averaged).
Speed: training images/s over 2 epochs without validation (podium: `fold = "all"`,
its `train_images_per_s`) and inference ms/image with 1 and 8 TTA variants over the
test images (podium: `predict`'s `ms_per_image`; PyTorch: eval mode, sigmoid, the
variants mapped back and averaged), three runs each side, medians.
No augmentation on either side, so that both see the same images.
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
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PODIUM = os.environ.get("PODIUM_BIN", os.path.join(ROOT, "target", "release", "podium"))
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
K = 3


def podium(args, cwd):
    r = subprocess.run([PODIUM, "op", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"podium {' '.join(args)}: {r.stderr}")


def load(d, split, ids):
    x, m = [], []
    for i in ids:
        img = np.asarray(Image.open(f"{d}/data/{split}_images/{i}.png").convert("RGB"), dtype=np.float32) / 255.0
        x.append(((img - MEAN) / STD).transpose(2, 0, 1))
        idx = np.asarray(Image.open(f"{d}/data/{split}_masks/{i}.png"))
        m.append(np.stack([(idx == c + 1) for c in range(K)]).astype(np.float32))
    return torch.tensor(np.stack(x)), torch.tensor(np.stack(m))


def dice_iou(prob, truth):
    p, t = prob >= 0.5, truth > 0.5
    both = (p & t).sum((2, 3)).double()
    ps, ts = p.sum((2, 3)).double(), t.sum((2, 3)).double()
    dice = torch.where(ps + ts == 0, 1.0, 2 * both / (ps + ts).clamp(min=1))
    union = ps + ts - both
    iou = torch.where(union == 0, 1.0, both / union.clamp(min=1))
    return float(dice.mean()), float(iou.mean())


def torch_train(arch, x, m, xv, mv, epochs, bs, lr, seed):
    torch.manual_seed(seed)
    model = smp.Unet(arch, encoder_weights=None, classes=K)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    dice_loss = smp.losses.DiceLoss(mode="multilabel", from_logits=True)
    n = len(x)
    steps = epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    best, secs = (0.0, 0.0), 0.0
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        for b in range(0, n, bs):
            j = perm[b:b + bs]
            if len(j) < 2:
                continue
            logits = model(x[j])
            loss = F.binary_cross_entropy_with_logits(logits, m[j]) + dice_loss(logits, m[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        secs += time.perf_counter() - t0
        if xv is not None:
            model.eval()
            with torch.no_grad():
                prob = torch.cat([torch.sigmoid(model(xv[b:b + bs])) for b in range(0, len(xv), bs)])
            best = max(best, dice_iou(prob, mv))
    return model, best, n * epochs / secs


def torch_predict(model, x, tta, bs):
    model.eval()
    flips = [(), (3,), (2,), (2, 3), "t", "t3", "t2", "t23"][:tta]
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(x), bs):
            xb, acc = x[b:b + bs], 0
            for f in flips:
                if isinstance(f, str):
                    dims = tuple(int(c) for c in f[1:])
                    xi = xb.transpose(2, 3)
                    xi = xi.flip(dims) if dims else xi
                    p = torch.sigmoid(model(xi))
                    p = (p.flip(dims) if dims else p).transpose(2, 3)
                else:
                    p = torch.sigmoid(model(xb.flip(f) if f else xb))
                    p = p.flip(f) if f else p
                acc = acc + p
    return (time.perf_counter() - t0) * 1000 / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.003)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bs = 16
    with tempfile.TemporaryDirectory() as d:
        podium(["synth", "--set", "task=segment", "--set", f"n_train={a.n}", "--set", "n_test=64",
                "--set", "size=64", "--set", f"classes={K}", "--set", "seed=5", "-o", "data"], d)
        podium(["folds", "--set", "k=5", "data/train.csv", "-o", "folds.csv"], d)
        rows = [l.split(",") for l in open(f"{d}/folds.csv").read().split()[1:]]
        train_ids = [i for i, f in rows if f != "0"]
        val_ids = [i for i, f in rows if f == "0"]
        all_ids = [i for i, _ in rows]
        test_ids = sorted(p[:-4] for p in os.listdir(f"{d}/data/test_images"))
        common = ["--set", "task=segment", "--set", f"arch={a.arch}", "--set", "masks=data/train_masks",
                  "--set", f"batch_size={bs}", "--set", f"lr={a.lr}", "-j", str(a.threads)]
        # Quality: fold 0, best epoch's Dice.
        podium(["train", *common, "--set", "fold=0", "--set", f"epochs={a.epochs}",
                "data/train_images", "data/train.csv", "folds.csv", "-o", "q"], d)
        pm = json.load(open(f"{d}/q/metrics.json"))
        x, m = load(d, "train", train_ids)
        xv, mv = load(d, "train", val_ids)
        _, (tdice, tiou), _ = torch_train(a.arch, x, m, xv, mv, a.epochs, bs, a.lr, 0)
        # Speed: 2 epochs on every training image, no validation.
        podium(["train", *common, "--set", "fold=all", "--set", "epochs=2",
                "data/train_images", "data/train.csv", "-o", "s"], d)
        pspeed = json.load(open(f"{d}/s/metrics.json"))["train_images_per_s"]
        xa, ma = load(d, "train", all_ids)
        model, _, tspeed = torch_train(a.arch, xa, ma, None, None, 2, bs, a.lr, 0)
        xt, _ = load(d, "test", test_ids)
        pred = {}
        for tta, names in [(1, '["default"]'), (8, '"all"')]:
            pt, tt = [], []
            for r in range(3):
                out = f"p{tta}_{r}"
                podium(["predict", "--set", f"tta={names}", "--set", f"batch_size={bs}", "-j", str(a.threads),
                        "q/best.safetensors", "data/test_images", "-o", out], d)
                pt.append(json.load(open(f"{d}/{out}/metrics.json"))["ms_per_image"])
                tt.append(torch_predict(model, xt, tta, bs))
            pred[tta] = (statistics.median(pt), statistics.median(tt))
    print(f"torch {torch.__version__}, smp {smp.__version__}, {a.threads} threads, {a.arch}, "
          f"{a.n} images of 64², {a.epochs} epochs")
    print("| case | podium | smp Unet | podium against smp (difference; speed ratio, > 1: podium faster) |")
    print("|---|---|---|---|")
    print(f"| validation Dice (best epoch) | {pm['dice']:.4f} | {tdice:.4f} | {pm['dice'] - tdice:+.4f} |")
    print(f"| validation IoU | {pm['iou']:.4f} | {tiou:.4f} | {pm['iou'] - tiou:+.4f} |")
    print(f"| train images/s | {pspeed:.1f} | {tspeed:.1f} | {pspeed / tspeed:.2f} |")
    for tta in (1, 8):
        p, t = pred[tta]
        print(f"| predict {tta}× TTA, ms/image | {p:.2f} | {t:.2f} | {t / p:.2f} |")


if __name__ == "__main__":
    main()
