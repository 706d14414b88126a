#!/usr/bin/env bash
# GPU builds without a CUDA installation, and their tests and benchmarks on a GPU machine
# that has no cargo (docs/gpu.md).
#
#   scripts/gpu.sh build          # here: x86-64 Linux, Rust, Python 3 and pip reaching PyPI
#   scripts/gpu.sh test [FILTER]  # there, in the repository root: the GPU tests (default filter: gpu)
#   scripts/gpu.sh bench          # there: conv kernels and training, podium against PyTorch CUDA
#
# `build` takes nvcc, the CUDA runtime, cuBLAS, cuRAND, NVRTC and cuDNN 9 from NVIDIA's
# PyPI wheels (CUDA 13.0: it needs a driver ≥ 580 where it runs), builds podium, the GPU
# tests and the conv bench with `--features cudnn` for compute capability $CUDA_COMPUTE_CAP
# (default 90: H100/H200), and packs the stripped binaries into .gpu/bin.tar.xz (≈ 35 MB),
# the one file to copy to the GPU machine. `test` and `bench` there take CUDA's libraries
# from the nvidia-* wheels of that machine's python3 (a PyTorch CUDA install has them).
# PODIUM_CUDA_VENV and CARGO_TARGET_DIR reuse a venv and a target directory of an earlier build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
gpu=$root/.gpu

build() {
    local venv=${PODIUM_CUDA_VENV:-$gpu/venv} lib=$gpu/lib target=${CARGO_TARGET_DIR:-$root/target/cuda}
    mkdir -p "$lib" "$gpu/bin"
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" \
        "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
        "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" nvidia-curand nvidia-cudnn-cu13
    local nv
    nv=$("$venv/bin/python" -c 'import nvidia; print(list(nvidia.__path__)[0])')
    # The linker wants unversioned names; the wheels ship only the sonames.
    for so in "$nv"/cu13/lib/lib{cudart,cublas,cublasLt,curand,nvrtc}.so.* "$nv"/cudnn/lib/libcudnn.so.9; do
        local base=${so##*/}
        ln -sfn "$so" "$lib/${base%%.so*}.so"
    done
    export PATH=$nv/cu13/bin:$PATH CUDA_HOME=$nv/cu13 CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
    export LIBRARY_PATH=$lib CARGO_TARGET_DIR=$target
    cargo build --release --locked --features cudnn --lib
    # No wheel ships the driver (libcuda.so.1 comes with it on the GPU machine): link against
    # a stub that defines the driver functions cudarc calls, each answering
    # CUDA_ERROR_STUB_LIBRARY (34) as NVIDIA's own stub does; the real one is loaded by soname.
    local rlib
    rlib=$(ls -t "$target"/release/deps/libcudarc-*.rlib | head -1)
    nm "$rlib" 2>/dev/null | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ { print "int " $2 "(void) { return 34; }" }' \
        | sort -u > "$gpu/cuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/libcuda.so" "$gpu/cuda_stub.c"
    local exes=$gpu/executables.json
    {
        cargo build --release --locked --features cudnn --bin podium --message-format=json
        cargo test --release --locked --features cudnn --no-run --message-format=json --test it
        cargo bench --locked --features cudnn --no-run --bench conv --message-format=json
    } > "$exes"
    python3 - "$exes" "$gpu/bin" <<'EOF'
import json, shutil, subprocess, sys
exes, out = sys.argv[1], sys.argv[2]
for line in open(exes):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in (
            "podium", "it", "conv"):
        subprocess.run(["strip", "-o", f"{out}/{m['target']['name']}", m["executable"]], check=True)
EOF
    # The tests find their fixtures under the directory they were built in.
    echo "$root" > "$gpu/bin/BUILT_IN"
    tar -C "$gpu/bin" -cf - . | xz -T0 -6 > "$gpu/bin.tar.xz"
    ls -l "$gpu/bin.tar.xz"
}

# On the GPU machine: unpack, find CUDA's libraries, make the build directory's path resolve here.
setup() {
    [ -x "$gpu/bin/podium" ] || { mkdir -p "$gpu/bin" && tar -C "$gpu/bin" -xJf "$gpu/bin.tar.xz"; }
    local nv built
    nv=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
    LD_LIBRARY_PATH=$(find "$nv" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LD_LIBRARY_PATH CARGO_BIN_EXE_podium=$gpu/bin/podium PODIUM_BIN=$gpu/bin/podium
    built=$(cat "$gpu/bin/BUILT_IN")
    if [ "$built" != "$root" ] && [ ! -e "$built" ]; then
        mkdir -p "$(dirname "$built")" && ln -s "$root" "$built"
    fi
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
}

case "${1:-}" in
build) build ;;
test)
    setup
    failed=0
    # The GPU tests of the kernels, the models and training (tests/it/).
    "$gpu/bin/it" --test-threads 1 "${2:-gpu}" || failed=1
    exit $failed
    ;;
bench)
    setup
    python3 benches/conv.py --device cuda --bench-bin "$gpu/bin/conv" --size 224
    python3 benches/train.py --device cuda --size 224
    ;;
*)
    sed -n '2,15p' "$0"
    exit 2
    ;;
esac
