#!/usr/bin/env python3
"""Training and inference speed: podium (candle) against PyTorch on the same nets,
batch size, optimizer, thread count and device, in one run.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch timm
    cargo build --release
    /tmp/torchvenv/bin/python benches/train.py [--threads 2] [--size 64]

On a GPU: build with `cargo build --release --features cudnn` and pass
`--device cuda` (PyTorch eager CUDA, TF32 convolutions allowed on both sides, as
PyTorch's default).

Podium's figures come from `podium op train` (fold "all", its `train_images_per_s`
without validation) and `podium op predict` (`ms_per_image`); PyTorch's from the same
loop written in PyTorch (train mode, AdamW, cross-entropy) on the same number of
images. CPU-seconds (user + system) are reported too: steadier on a busy machine.
Inference runs on 256 images, three times each side; the medians are reported.
"""
import argparse
import json
import os
import resource
import subprocess
import statistics
import sys
import tempfile
import time

import timm
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PODIUM = os.environ.get("PODIUM_BIN", os.path.join(ROOT, "target", "release", "podium"))
N_TEST = 256
REPS = 3


class SimpleCnn(nn.Module):
    def __init__(self, classes):
        super().__init__()
        layers, cin = [], 3
        for c in (32, 64, 128):
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            cin = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def podium(args, cwd):
    c0, t0 = child_cpu(), time.perf_counter()
    subprocess.run([PODIUM, "op", *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0, child_cpu() - c0


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def torch_train(arch, n, size, bs, epochs, device):
    model = SimpleCnn(4) if arch == "simple_cnn" else timm.create_model(arch, num_classes=4)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.rand(n, 3, size, size, device=device)
    y = torch.randint(0, 4, (n,), device=device)
    model.train()
    if device == "cuda":
        # One warm-up step: CUDA's context, cuDNN's algorithm search.
        nn.functional.cross_entropy(model(x[:bs]), y[:bs]).backward()
        opt.zero_grad()
        sync(device)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for i in range(0, n, bs):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[i:i + bs]), y[i:i + bs])
            loss.backward()
            opt.step()
    sync(device)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return n * epochs / wall, n * epochs / cpu


def torch_infer(arch, n, size, tta, device):
    model = SimpleCnn(4) if arch == "simple_cnn" else timm.create_model(arch, num_classes=4)
    model = model.to(device).eval()
    x = torch.rand(n, 3, size, size, device=device)
    with torch.no_grad():
        model(x[:64])
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n, 64):
            b = x[i:i + 64]
            for k in range(tta):
                v = b
                if k & 1:
                    v = v.flip(2)
                if k & 2:
                    v = v.flip(3)
                if k & 4:
                    v = v.transpose(2, 3)
                model(v).softmax(-1).cpu()
    sync(device)
    return (time.perf_counter() - t0) * 1000 / n


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def podium_path():
    """The kernels podium chooses (crates/podium-kernels/src/isa.rs): PODIUM_CPU, else the widest the CPU has."""
    if os.environ.get("PODIUM_CPU"):
        return os.environ["PODIUM_CPU"] + " (PODIUM_CPU)"
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "").split()
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags and "fma" in flags else "portable"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--archs", default="simple_cnn,resnet18")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([PODIUM, "op", "synth", "--set", f"n_train={a.n}", "--set", f"n_test={N_TEST}",
                        "--set", f"size={a.size}", "--set", "classes=4", "-o", "data"], cwd=d, check=True,
                       capture_output=True)
        for arch in a.archs.split(","):
            epochs = 2
            out = f"tr_{arch}"
            wall, cpu = podium(["train", "--set", f"arch={arch}", "--set", f"epochs={epochs}",
                                "--set", "batch_size=32", "--set", f"device={a.device}", "-j", str(a.threads),
                                "data/train_images", "data/train.csv", "-o", out], d)
            m = json.load(open(os.path.join(d, out, "metrics.json")))
            p_ips = m["train_images_per_s"]
            p_cpu = a.n * epochs / cpu
            t_ips, t_cpu = torch_train(arch, a.n, a.size, 32, epochs, a.device)
            rows.append((f"train {arch} {a.size}², batch 32", p_ips, t_ips, p_cpu, t_cpu))
            for tta in (1, 8):
                tta_set = "tta=default" if tta == 1 else "tta=all"
                ms = []
                for r in range(REPS):
                    po = f"p_{arch}_{tta}_{r}"
                    podium(["predict", "--set", tta_set, "--set", f"device={a.device}", "-j", str(a.threads),
                            f"{out}/best.safetensors",
                            "data/test_images", "-o", po], d)
                    ms.append(json.load(open(os.path.join(d, po, "metrics.json")))["ms_per_image"])
                t_ms = statistics.median(torch_infer(arch, N_TEST, a.size, tta, a.device) for _ in range(REPS))
                rows.append((f"predict {arch}, {tta}× TTA (ms/image)", statistics.median(ms), t_ms, None, None))
    where = torch.cuda.get_device_name(0) if a.device == "cuda" else "CPU"
    print(f"cpu: {cpu_model()}; podium kernels: {podium_path()}")
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), {a.threads} threads, {where}")
    print("| case | podium | PyTorch | ratio (podium speed / PyTorch's) | podium per CPU-s | PyTorch per CPU-s |")
    print("|---|---|---|---|---|---|")
    for name, p, t, pc, tc in rows:
        if pc is None:
            print(f"| {name} | {p:.2f} ms | {t:.2f} ms | {t / p:.2f} | | |")
        else:
            print(f"| {name} (images/s) | {p:.1f} | {t:.1f} | {p / t:.2f} | {pc:.1f} | {tc:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
