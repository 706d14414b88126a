#!/usr/bin/env python3
"""Pipeline-engine benchmark: the same competition-shaped pipeline for podium,
ninja, Snakemake and DVC, timed side by side in one run.

Shape, N = 4F + 4 stages: prepare -> F folds x (split, train, finetune, tta)
-> ensemble -> pseudo -> post. Every stage is a trivial `cat`; podium's
commands end in a comment naming the stage, so that no two stages share a key
(the same command over the same bytes would run once) and podium runs all N,
as the others do. Each fold's split also reads a leaf input data/fold_F.txt;
changing fold 0's is the "one leaf changes" case (7 stages rerun).

Usage (from the repository root):
    python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install ninja snakemake dvc
    cargo build --release
    /tmp/benchvenv/bin/python benches/pipelines.py --sizes 100 1000 --tools podium ninja snakemake dvc

DVC is slow at 1,000 stages (over 10 minutes for a full run); `--dvc-max N` skips it above N.
PODIUM_BIN=PATH times another podium binary (an A/B against an older build).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PODIUM = os.environ.get("PODIUM_BIN") or os.path.join(ROOT, "target", "release", "podium")


def folds_for(n):
    return max(1, (n - 4) // 4)


def write_data(d, f):
    os.makedirs(os.path.join(d, "data"), exist_ok=True)
    with open(os.path.join(d, "data", "input.txt"), "w") as fh:
        fh.write("input\n")
    for i in range(f):
        with open(os.path.join(d, "data", f"fold_{i}.txt"), "w") as fh:
            fh.write(f"fold {i}\n")


def gen_podium(d, f):
    s = f"""[pipeline]
name = "bench"
[params]
folds = {f}
[inputs.input]
path = "data/input.txt"
[stages.prepare]
op = "exec"
cmd = "cat ${{inputs.input}} > $PODIUM_OUT/out # prepare"
outs = ["out"]
[stages.split]
op = "exec"
matrix = {{ fold = "${{range(params.folds)}}" }}
cmd = "cat ${{stages.prepare.out}} data/fold_${{fold}}.txt > $PODIUM_OUT/out # split"
deps = ["${{format('data/fold_{{}}.txt', fold)}}"]
outs = ["out"]
"""
    prev = "split"
    for st in ["train", "finetune", "tta"]:
        s += f"""[stages.{st}]
op = "exec"
matrix = {{ fold = "${{range(params.folds)}}" }}
cmd = "cat ${{stages.{prev}[fold=fold].out}} > $PODIUM_OUT/out # {st}"
outs = ["out"]
"""
        prev = st
    s += """[stages.ensemble]
op = "exec"
cmd = "cat ${stages.tta[*].out} > $PODIUM_OUT/out # ensemble"
outs = ["out"]
[stages.pseudo]
op = "exec"
cmd = "cat ${stages.ensemble.out} > $PODIUM_OUT/out # pseudo"
outs = ["out"]
[stages.post]
op = "exec"
cmd = "cat ${stages.pseudo.out} > $PODIUM_OUT/out # post"
outs = ["out"]
"""
    with open(os.path.join(d, "p.toml"), "w") as fh:
        fh.write(s)


def gen_ninja(d, f):
    lines = ["rule cat", "  command = cat $in > $out", "build o/prepare: cat data/input.txt"]
    for i in range(f):
        lines.append(f"build o/split_{i}: cat o/prepare data/fold_{i}.txt")
        lines.append(f"build o/train_{i}: cat o/split_{i}")
        lines.append(f"build o/finetune_{i}: cat o/train_{i}")
        lines.append(f"build o/tta_{i}: cat o/finetune_{i}")
    lines.append("build o/ensemble: cat " + " ".join(f"o/tta_{i}" for i in range(f)))
    lines.append("build o/pseudo: cat o/ensemble")
    lines.append("build o/post: cat o/pseudo")
    with open(os.path.join(d, "build.ninja"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


def gen_snakemake(d, f):
    s = f"""FOLDS = range({f})
rule all:
    input: "o/post"
rule prepare:
    input: "data/input.txt"
    output: "o/prepare"
    shell: "cat {{input}} > {{output}}"
rule split:
    input: "o/prepare", "data/fold_{{f}}.txt"
    output: "o/split_{{f}}"
    shell: "cat {{input}} > {{output}}"
"""
    prev = "split"
    for st in ["train", "finetune", "tta"]:
        s += f"""rule {st}:
    input: "o/{prev}_{{f}}"
    output: "o/{st}_{{f}}"
    shell: "cat {{input}} > {{output}}"
"""
        prev = st
    s += """rule ensemble:
    input: expand("o/tta_{f}", f=FOLDS)
    output: "o/ensemble"
    shell: "cat {input} > {output}"
rule pseudo:
    input: "o/ensemble"
    output: "o/pseudo"
    shell: "cat {input} > {output}"
rule post:
    input: "o/pseudo"
    output: "o/post"
    shell: "cat {input} > {output}"
"""
    with open(os.path.join(d, "Snakefile"), "w") as fh:
        fh.write(s)


def gen_dvc(d, f):
    st = ["stages:",
          "  prepare:", "    cmd: mkdir -p o && cat data/input.txt > o/prepare",
          "    deps: [data/input.txt]", "    outs: [o/prepare]"]
    for i in range(f):
        st += [f"  split_{i}:", f"    cmd: cat o/prepare data/fold_{i}.txt > o/split_{i}",
               f"    deps: [o/prepare, data/fold_{i}.txt]", f"    outs: [o/split_{i}]"]
        prev = f"split_{i}"
        for name in ["train", "finetune", "tta"]:
            st += [f"  {name}_{i}:", f"    cmd: cat o/{prev} > o/{name}_{i}",
                   f"    deps: [o/{prev}]", f"    outs: [o/{name}_{i}]"]
            prev = f"{name}_{i}"
    tta = " ".join(f"o/tta_{i}" for i in range(f))
    st += ["  ensemble:", f"    cmd: cat {tta} > o/ensemble",
           "    deps: [" + ", ".join(f"o/tta_{i}" for i in range(f)) + "]", "    outs: [o/ensemble]",
           "  pseudo:", "    cmd: cat o/ensemble > o/pseudo", "    deps: [o/ensemble]", "    outs: [o/pseudo]",
           "  post:", "    cmd: cat o/pseudo > o/post", "    deps: [o/pseudo]", "    outs: [o/post]"]
    with open(os.path.join(d, "dvc.yaml"), "w") as fh:
        fh.write("\n".join(st) + "\n")
    os.makedirs(os.path.join(d, "o"), exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=d, check=True)
    subprocess.run([tool_path("dvc"), "init", "-q"], cwd=d, check=True)


def tool_path(name):
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else name


def commands(tool):
    j = str(os.cpu_count() or 2)
    if tool == "podium":
        run = [PODIUM, "run", "-f", "p.toml", "-j", j]
        return {"run": run, "dry": [PODIUM, "plan", "-f", "p.toml"]}
    if tool == "ninja":
        return {"run": [tool_path("ninja"), "-j", j], "dry": [tool_path("ninja"), "-n"]}
    if tool == "snakemake":
        sm = [tool_path("snakemake"), "--cores", j, "--quiet", "all"]
        return {"run": sm, "dry": sm + ["-n"]}
    if tool == "dvc":
        return {"run": [tool_path("dvc"), "repro", "-q"], "dry": [tool_path("dvc"), "status", "-q"]}
    raise ValueError(tool)


GEN = {"podium": gen_podium, "ninja": gen_ninja, "snakemake": gen_snakemake, "dvc": gen_dvc}


def timed(cmd, cwd, reps=1):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ts.append(time.perf_counter() - t)
        # `dvc status -q` exits 1 when something is stale; that is an answer, not an error.
        if r.returncode not in (0, 1) or (r.returncode == 1 and "status" not in cmd):
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.decode()[-2000:]}")
    return statistics.median(ts)


# Work directories are removed only when every tool has run: on a filesystem
# that skips recently deleted inodes when it allocates one (ext4 without a
# journal, as on the CI machine kind), removing one tool's thousands of files
# would slow down the next tool's full run.
LEFT = []


def bench(tool, n, reps):
    f = folds_for(n)
    d = tempfile.mkdtemp(prefix=f"bench-{tool}-")
    LEFT.append(d)
    write_data(d, f)
    os.makedirs(os.path.join(d, "o"), exist_ok=True)
    GEN[tool](d, f)
    c = commands(tool)
    res = {"stages": 4 * f + 4}
    res["full"] = timed(c["run"], d)
    res["noop"] = timed(c["run"], d, reps)
    res["dry"] = timed(c["dry"], d, reps)
    with open(os.path.join(d, "data", "fold_0.txt"), "a") as fh:
        fh.write("changed\n")
    res["leaf"] = timed(c["run"], d)
    return res


def plan_scale(instances, reps):
    """Time `podium plan` (cold store) and `podium check` on one stage fanned out
    by a matrix into `instances` instances, plus a fan-in stage over all of them."""
    d = tempfile.mkdtemp(prefix="bench-scale-")
    try:
        a = 1000
        b = max(1, instances // a)
        with open(os.path.join(d, "p.toml"), "w") as fh:
            fh.write(f"""[stages.train]
op = "exec"
matrix = {{ a = "${{range({a})}}", b = "${{range({b})}}" }}
cmd = "echo ${{a}} ${{b}} > $PODIUM_OUT/o"
outs = ["o"]
[stages.fuse]
op = "exec"
cmd = "cat ${{stages.train[*].o}} > $PODIUM_OUT/o"
outs = ["o"]
""")
        n = a * b + 1
        check = timed([PODIUM, "check", "p.toml"], d, reps)
        plan = timed([PODIUM, "plan", "-f", "p.toml"], d, reps)
        print(f"scale: {n} instances: check {check:.3f}s, plan {plan:.3f}s (median of {reps})")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--tools", nargs="+", default=["podium", "ninja", "snakemake", "dvc"])
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the no-op and dry runs (median)")
    ap.add_argument("--dvc-max", type=int, default=100)
    ap.add_argument("--plan-scale", type=int, default=0, metavar="INSTANCES",
                    help="also time planning a matrix fan-out of this many instances")
    a = ap.parse_args()
    try:
        run(a)
    finally:
        for d in LEFT:
            shutil.rmtree(d, ignore_errors=True)


def run(a):
    if a.plan_scale:
        plan_scale(a.plan_scale, a.reps)
    rows = []
    for n in a.sizes:
        for tool in a.tools:
            if tool == "dvc" and n > a.dvc_max:
                continue
            r = bench(tool, n, a.reps)
            rows.append((n, tool, r))
            print(f"N={r['stages']:>5} {tool:<10} full {r['full']:8.3f}s  no-op {r['noop']*1000:9.1f}ms  "
                  f"dry {r['dry']*1000:9.1f}ms  one-leaf {r['leaf']*1000:9.1f}ms", flush=True)
    print()
    print("| stages | tool | full run | no-op rerun | dry run | one-leaf rerun |")
    print("|---:|---|---:|---:|---:|---:|")
    for n, tool, r in rows:
        print(f"| {r['stages']} | {tool} | {r['full']:.3f} s | {r['noop']*1000:.1f} ms | {r['dry']*1000:.1f} ms | {r['leaf']*1000:.1f} ms |")
    print()
    print("Ratios, peer time / podium time (> 1: podium is faster):")
    for n in a.sizes:
        p = next((r for m, t, r in rows if m == n and t == "podium"), None)
        if not p:
            continue
        for m, t, r in rows:
            if m == n and t != "podium":
                print(f"  N={r['stages']} {t}: full {r['full']/p['full']:.2f}x, no-op {r['noop']/p['noop']:.2f}x, "
                      f"dry {r['dry']/p['dry']:.2f}x, one-leaf {r['leaf']/p['leaf']:.2f}x")


if __name__ == "__main__":
    main()
