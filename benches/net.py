#!/usr/bin/env python3
"""Whole-network speed in one process, warm: podium's nets (`benches/net.rs`)
against PyTorch's same nets (timm; simple_cnn as in `benches/train.py`), the
forward pass in evaluation mode (inference) and forward + backward of
cross-entropy in training mode (a training step without the optimizer), same
batch, image size and thread count, in one run.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch timm
    /tmp/torchvenv/bin/python benches/net.py [--threads 2] [--size 64] [--batch 64]

`benches/train.py` times `podium op train` / `podium op predict` end to end
(decoding, augmentation, cold memory); this separates the nets from what the
ops add around them. Times are the minimum over the repetitions (the median
is printed beside it); the ratio is PyTorch's time over podium's (above 1:
podium is faster).
"""
import argparse
import json
import os
import subprocess
import sys

import timm
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv import samples  # noqa: E402
from train import SimpleCnn, cpu_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(reps, f):
    """Minimum and median of `reps` timings, ms."""
    out = sorted(samples(reps, f))
    return out[0], out[len(out) // 2]


def torch_net(arch, size, batch, reps):
    model = SimpleCnn(4) if arch == "simple_cnn" else timm.create_model(arch, num_classes=4)
    x = torch.rand(batch, 3, size, size)
    y = torch.arange(batch) % 4

    def infer():
        with torch.no_grad():
            model(x).softmax(-1)

    def train():
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    model.eval()
    i = timed(reps, infer)
    model.train()
    t = timed(reps, train)
    return [v / batch for v in (*i, *t)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--archs", default="simple_cnn,resnet18,efficientnet_b0")
    ap.add_argument("--bench-bin", default=None,
                    help="a built `net` bench binary to run instead of `cargo bench`")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    flags = ["--size", str(a.size), "--batch", str(a.batch), "--reps", str(a.reps), "--archs", a.archs]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    cmd = [a.bench_bin, *flags] if a.bench_bin else ["cargo", "bench", "-q", "--bench", "net", "--", *flags]
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    header = next((l[2:] for l in out.splitlines() if l.startswith("# ")), f"cpu: {cpu_model()}")
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    print(header)
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), {a.threads} threads, "
          f"{a.size}² images, batch {a.batch}; ms per image, minimum (median), ratio = PyTorch / podium")
    print("| net | inference, podium | PyTorch | ratio | training step (fwd + bwd), podium | PyTorch | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ti, ti_med, tt, tt_med = torch_net(r["arch"], a.size, a.batch, a.reps)
        pi, pi_med = r["infer_ms_per_image"], r["infer_ms_per_image_median"]
        pt, pt_med = r["train_ms_per_image"], r["train_ms_per_image_median"]
        print(f"| {r['arch']} | {pi:.3f} ({pi_med:.3f}) | {ti:.3f} ({ti_med:.3f}) | {ti / pi:.2f} "
              f"| {pt:.3f} ({pt_med:.3f}) | {tt:.3f} ({tt_med:.3f}) | {tt / pt:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
