#!/usr/bin/env python3
"""Per-op convolution speed: podium's CPU kernels (`benches/conv.rs`) against
PyTorch's (oneDNN) on the conv shapes of resnet18 and efficientnet_b0 listed in
`benches/conv_shapes.json`, forward, backward-data and backward-weights, same
batch and thread count, in one run.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch
    /tmp/torchvenv/bin/python benches/conv.py [--threads 2] [--size 64 --batch 32] [--only TEXT]

PyTorch's backward halves are `aten.convolution_backward` with one output asked
for at a time. Times are medians; the ratio is PyTorch's time over podium's
(above 1: podium is faster).
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def samples(reps, f):
    """`reps` timings of `f` in ms, after one warm-up call."""
    f()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def timed(reps, f):
    return statistics.median(samples(reps, f))


def torch_case(s, size, batch, reps, device):
    hw = size // s["at"]
    x = torch.rand(batch, s["cin"], hw, hw, device=device)
    w = torch.rand(s["cout"], s["cin"] // s["groups"], s["k"], s["k"], device=device)
    args = dict(stride=s["stride"], padding=s["pad"], groups=s["groups"])
    y = torch.nn.functional.conv2d(x, w, **args)
    st, pd = [s["stride"]] * 2, [s["pad"]] * 2

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def fwd():
        torch.nn.functional.conv2d(x, w, **args)
        sync()

    def back(mask):
        torch.ops.aten.convolution_backward(y, x, w, None, st, pd, [1, 1], False, [0, 0], s["groups"], mask)
        sync()

    with torch.no_grad():
        return (timed(reps, fwd),
                timed(reps, lambda: back([True, False, False])),
                timed(reps, lambda: back([False, True, False])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default=None, help="only the cases whose net or name contains this")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: podium's conv ops through cuDNN (cargo feature cudnn) against PyTorch eager CUDA")
    ap.add_argument("--bench-bin", default=None,
                    help="a built `conv` bench binary to run instead of `cargo bench` (a machine without cargo)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    cmd = [a.bench_bin] if a.bench_bin else ["cargo", "bench", "--quiet", "--bench", "conv"] + (
        ["--features", "cudnn"] if a.device == "cuda" else []) + ["--"]
    out = subprocess.run(cmd + ["--size", str(a.size), "--batch", str(a.batch), "--reps", str(a.reps),
                                "--device", a.device] + (["--only", a.only] if a.only else []),
                         cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    ours = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    shapes = json.load(open(os.path.join(ROOT, "benches", "conv_shapes.json")))
    if a.only:
        shapes = [s for s in shapes if a.only in f"{s['net']} {s['name']}"]
    where = torch.cuda.get_device_name(0) if a.device == "cuda" else f"{a.threads} threads"
    for l in out.splitlines():
        if l.startswith("# cpu:"):
            print(l[2:])
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), {where}, "
          f"{a.size}² input, batch {a.batch}; ms, ratio = PyTorch / podium")
    print("| net | conv (input map) | forward | backward-data | backward-weights |")
    print("|---|---|---|---|---|")
    ratios = []
    for s, p in zip(shapes, ours):
        t = torch_case(s, a.size, a.batch, a.reps, a.device)
        cells = []
        for key, tt in zip(("forward_ms", "backward_data_ms", "backward_weight_ms"), t):
            r = tt / p[key]
            ratios.append(r)
            cells.append(f"{p[key]:.2f} vs {tt:.2f} ({r:.2f})")
        print(f"| {s['net']} | {s['name']} ({p['hw']}²) | " + " | ".join(cells) + " |")
    geo = statistics.geometric_mean(ratios)
    print(f"\ngeometric mean ratio {geo:.2f}, lowest {min(ratios):.2f}, highest {max(ratios):.2f}")


if __name__ == "__main__":
    main()
