#!/usr/bin/env python3
"""Writes the large manifests of docs/benchmarks.md ("Checking large
manifests") into a directory, and times `podium check` on each with
/usr/bin/time (wall seconds and peak resident memory).

    cargo build --release
    python3 benches/check_large.py /tmp/large target/release/podium
"""
import os
import subprocess
import sys


def params(n):
    # Each param built on the one above it, as a chain of expressions;
    # about 50 bytes a line, as in the 10 MB manifest.
    s = '[pipeline]\nname = "params"\n[params]\np0 = 0\n'
    s += "".join(f'p{i} = "${{params.p{i - 1} * 1 - params.p0 + 1}}"\n' for i in range(1, n))
    return s + '[stages.a]\nop = "exec"\ncmd = "echo ${params.p0} > $PODIUM_OUT/o"\nouts = ["o"]\n'


def stages(n):
    # A chain of stages, each reading the one before; about 180 bytes each.
    s = '[pipeline]\nname = "stages"\n[params]\nk = 3\n'
    for i in range(n):
        dep = f" ${{stages.s{i - 1}.o}}" if i else ""
        s += (
            f'[stages.s{i}]\nop = "exec"\ndescription = "stage {i} of a long chain, described"\n'
            f'cmd = "cat{dep} > $PODIUM_OUT/o && echo ${{params.k}}"\nouts = ["o"]\n'
        )
    return s


def matrix(n):
    vals = ", ".join(str(i) for i in range(n))
    return (
        f'[pipeline]\nname = "matrix"\n[stages.m]\nop = "exec"\n'
        f"matrix = {{ a = [{vals}], b = [{vals}] }}\n"
        f'cmd = "echo ${{a}} ${{b}} > $PODIUM_OUT/o"\nouts = ["o"]\n'
    )


def main():
    out, podium = sys.argv[1], os.path.abspath(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    cases = [
        ("8k params", params(8_000)),
        ("16k params", params(16_000)),
        ("200k params", params(200_000)),
        ("20k stages", stages(20_000)),
        ("55k stages (10 MB)", stages(55_000)),
        ("1,000 x 1,000 matrix", matrix(1_000)),
    ]
    print("| manifest | size | wall | peak memory |\n|---|---:|---:|---:|")
    for name, text in cases:
        path = os.path.join(out, name.split()[0].replace(",", "") + name.split()[1] + ".toml")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", podium, "check", path],
            capture_output=True,
            text=True,
        )
        wall, kb = r.stderr.strip().splitlines()[-1].split()
        status = "" if r.returncode == 0 else f" (exit {r.returncode})"
        print(f"| {name}{status} | {len(text) / 1e6:.1f} MB | {wall} s | {int(kb) / 1024:.0f} MiB |")


main()
