#!/usr/bin/env python3
"""Remote-cache benchmark: fetching a whole pipeline's results into an empty
store, against copying the same bytes with the AWS CLI from the same S3
server, side by side in one run.

The pipeline is benches/pipelines.py's shape (N = 4F + 4 trivial stages).
Machine A runs it once with `--remote`, pushing every result; then, timed:
- podium: `podium run` on machine B (same manifest and inputs, empty store):
  plans against the remote, fetches every record and object (verified by
  blake3), and makes out/ visible; executes nothing.
- aws: `aws s3 cp --recursive` of the remote prefix (the same records and
  objects) into an empty directory.
The server is moto's (in memory, on 127.0.0.1), started by this script.

Usage (from the repository root):
    python3 -m venv /tmp/motovenv && /tmp/motovenv/bin/pip install 'moto[server]' awscli
    cargo build --release
    /tmp/motovenv/bin/python benches/remote.py --sizes 100 1000
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipelines  # noqa: E402

BIN = os.path.dirname(sys.executable)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_ENDPOINT_URL=endpoint,
        AWS_ALLOW_HTTP="true",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
    )
    env.pop("PODIUM_STORE", None)
    env.pop("PODIUM_OUT_DIR", None)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.1)
        aws = os.path.join(BIN, "aws")
        subprocess.run([aws, "s3", "mb", "s3://bench"], env=env, check=True, capture_output=True)
        print(f"moto_server on {endpoint}; podium {pipelines.PODIUM}")
        print("| stages | objects + records | bytes | podium run, empty store (s) | aws s3 cp --recursive (s) | podium / aws |")
        print("|---:|---:|---:|---:|---:|---:|")
        for n in args.sizes:
            f = pipelines.folds_for(n)
            url = f"s3://bench/n{n}"
            top = tempfile.mkdtemp(prefix="podium-remote-bench-")
            a = os.path.join(top, "a")
            pipelines.write_data(a, f)
            pipelines.gen_podium(a, f)
            subprocess.run([pipelines.PODIUM, "run", "-f", "p.toml", "--remote", url],
                           cwd=a, env=env, check=True, capture_output=True)
            pods, awss = [], []
            count = size = 0
            for _ in range(args.repeat):
                b = os.path.join(top, "b")
                shutil.rmtree(b, ignore_errors=True)
                pipelines.write_data(b, f)
                pipelines.gen_podium(b, f)
                t = time.perf_counter()
                r = subprocess.run([pipelines.PODIUM, "run", "-f", "p.toml", "--remote", url,
                                    "--format", "json"], cwd=b, env=env, check=True, capture_output=True)
                pods.append(time.perf_counter() - t)
                assert '"executed": []' in r.stdout.decode(), r.stdout.decode()
                c = os.path.join(top, "c")
                shutil.rmtree(c, ignore_errors=True)
                t = time.perf_counter()
                subprocess.run([aws, "s3", "cp", "--recursive", "--quiet", f"{url}/", c],
                               env=env, check=True)
                awss.append(time.perf_counter() - t)
                count = sum(len(fs) for _, _, fs in os.walk(c))
                size = sum(os.path.getsize(os.path.join(dp, x)) for dp, _, fs in os.walk(c) for x in fs)
            p, w = statistics.median(pods), statistics.median(awss)
            print(f"| {n} | {count} | {size} | {p:.2f} | {w:.2f} | {p / w:.2f} |")
            shutil.rmtree(top, ignore_errors=True)
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
