#!/usr/bin/env python3
"""Instance segmentation: podium's `task = "instance"` (FCOS + a Mask R-CNN mask head)
against torchvision's Mask R-CNN with the same backbone (resnet18, random init, batch
norm training), feature pyramid channels (`--fpn`), mask head (4 convs), image size,
batch size, optimizer (AdamW, cosine per batch), epochs, thread count and data, in one
run.

    /tmp/torchvenv/bin/pip install torch torchvision pycocotools
    cargo build --release
    /tmp/torchvenv/bin/python benches/instance.py [--threads 2] [--epochs 12] [--fpn 128]

The data is `synth` detect (1 to 4 shapes of 3 classes per 64-pixel image, each with its
visible mask as a COCO run-length `segmentation`); fold 0 of 5 validates. Quality: each
side's best epoch's validation mask mAP50 and mAP (both scored by `podium op evaluate`,
which equals pycocotools). Speed: training images/s over 2 epochs without validation
(podium: `fold = "all"`, its `train_images_per_s`), and inference ms/image over the 100
test images (podium: `predict`'s `ms_per_image`, decoding, pasting and writing included;
torchvision: eval mode on tensors in memory, masks pasted by its own postprocess), medians
of three. Mask R-CNN is two-stage (RPN + RoI heads on P2–P5); its anchors are scaled to the
small images (8 to 128 pixels), its transform told the images' own size (no resize) and
ImageNet's normalization; score threshold 0.05, `--max-det` detections per image on both
sides (20 by default: the shapes are at most 4 per image, and both sides run their mask
head on every detection kept, which at 100 per image dominated validation: a first run at
100 had podium's 8 epochs take over 7 minutes). No augmentation.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import pycocotools.mask as mask_util
import torch
import torchvision
from PIL import Image
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The FCOS bench's harness: podium's CLI, the normalization, the data and fold 0's ground truth.
from detect import MEAN, STD, podium, prepare, train_torchvision  # noqa: E402
from detect import detect as predict  # noqa: E402

def model(classes, fpn, max_det):
    body = torchvision.models.resnet18()
    bb = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                         [64, 128, 256, 512], fpn)
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    # Background is class 0 in torchvision: podium's class k is label k + 1.
    return MaskRCNN(bb, classes + 1, min_size=64, max_size=64, image_mean=MEAN, image_std=STD,
                    rpn_anchor_generator=anchors, box_score_thresh=0.05, box_detections_per_img=max_det)


def load(d, coco, ids, split="train"):
    by_name = {im["file_name"][:-4]: im["id"] for im in coco["images"]}
    anns = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    xs, ts = [], []
    for i in ids:
        img = np.asarray(Image.open(f"{d}/data/{split}_images/{i}.png").convert("RGB"), dtype=np.float32) / 255
        xs.append(torch.tensor(img.transpose(2, 0, 1)))
        a = anns.get(by_name[i], [])
        boxes = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (x["bbox"] for x in a)]
        masks = [mask_util.decode(x["segmentation"]) for x in a]
        h, w = img.shape[:2]
        ts.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                   "labels": torch.tensor([x["category_id"] + 1 for x in a], dtype=torch.int64),
                   "masks": torch.tensor(np.array(masks, dtype=np.uint8)).reshape(-1, h, w)})
    return xs, ts


def results(ids, outs, by_name):
    dets = []
    for i, o in zip(ids, outs):
        masks = (o["masks"][:, 0] >= 0.5).numpy().astype(np.uint8)
        for box, s, l, mk in zip(o["boxes"].tolist(), o["scores"].tolist(), o["labels"].tolist(), masks):
            rle = mask_util.encode(np.asfortranarray(mk))
            dets.append({"image_id": by_name[i], "category_id": l - 1, "score": s,
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return dets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--fpn", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.0005)
    ap.add_argument("--max-det", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    bs = 16
    with tempfile.TemporaryDirectory() as d:
        coco, train_ids, val_ids, by_name = prepare(d, a.n)
        common = ["--set", "task=instance", "--set", "arch=resnet18", "--set", f"fpn_channels={a.fpn}",
                  "--set", "head_convs=4", "--set", "mask_convs=4", "--set", f"batch_size={bs}",
                  "--set", f"lr={a.lr}", "--set", f"max_det={a.max_det}", "-j", str(a.threads)]
        podium(["train", *common, "--set", "fold=0", "--set", f"epochs={a.epochs}",
                "data/train_images", "data/train_coco.json", "folds.csv", "-o", "q"], d)
        pm = json.load(open(f"{d}/q/metrics.json"))

        x, t = load(d, coco, train_ids)
        xv, _ = load(d, coco, val_ids)
        m = model(3, a.fpn, a.max_det)

        def evaluate(epoch):
            json.dump(results(val_ids, predict(m, xv, bs), by_name), open(f"{d}/tv_{epoch}.json", "w"))
            podium(["evaluate", "--set", 'metric=["coco_segm_map50", "coco_segm_map"]', "val_gt.json",
                    f"tv_{epoch}.json", "-o", f"tv_{epoch}_m.json"], d)
            r = json.load(open(f"{d}/tv_{epoch}_m.json"))
            print(f"torchvision epoch {epoch + 1}: {r}", flush=True)
            return r["coco_segm_map50"], r["coco_segm_map"]

        best, tv_speed = train_torchvision(m, x, t, a.epochs, a.lr, bs, evaluate)

        podium(["train", *common, "--set", "fold=all", "--set", "epochs=2",
                "data/train_images", "data/train_coco.json", "-o", "s"], d)
        p_speed = json.load(open(f"{d}/s/metrics.json"))["train_images_per_s"]
        test = sorted(p[:-4] for p in os.listdir(f"{d}/data/test_images"))
        xt = [torch.tensor(np.asarray(Image.open(f"{d}/data/test_images/{i}.png").convert("RGB"),
                                      dtype=np.float32).transpose(2, 0, 1) / 255) for i in test]
        pt, tt = [], []
        for r in range(3):
            podium(["predict", "--set", f"batch_size={bs}", "--set", f"max_det={a.max_det}", "-j",
                    str(a.threads), "q/best.safetensors",
                    "data/test_images", "-o", f"p{r}"], d)
            pt.append(json.load(open(f"{d}/p{r}/metrics.json"))["ms_per_image"])
            t0 = time.perf_counter()
            predict(m, xt, bs)
            tt.append((time.perf_counter() - t0) * 1000 / len(xt))
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {a.threads} threads, resnet18, "
          f"pyramid {a.fpn} channels, {a.n} images of 64², {a.epochs} epochs, lr {a.lr}")
    print("| case | podium (FCOS + mask head) | torchvision Mask R-CNN | podium against torchvision |")
    print("|---|---|---|---|")
    print(f"| validation mask mAP50 (best epoch) | {pm['coco_segm_map50']:.4f} | {best[0]:.4f} | "
          f"{pm['coco_segm_map50'] - best[0]:+.4f} |")
    print(f"| validation mask mAP | {pm['coco_segm_map']:.4f} | {best[1]:.4f} | {pm['coco_segm_map'] - best[1]:+.4f} |")
    print(f"| train images/s | {p_speed:.1f} | {tv_speed:.1f} | {p_speed / tv_speed:.2f}× |")
    p, t = statistics.median(pt), statistics.median(tt)
    print(f"| predict, ms/image | {p:.2f} | {t:.2f} | {t / p:.2f}× |")


if __name__ == "__main__":
    main()
