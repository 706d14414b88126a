#!/usr/bin/env bash
# Input hashing: podium against b3sum on the same directory, cold (no stat
# cache) and warm (stat cache, nothing changed).
#
#   cargo install b3sum && cargo build --release
#   benches/hashing.sh [FILES] [BYTES_PER_FILE]    # default 1024 files of 1 MiB = 1 GiB
#   benches/hashing.sh 100000 64                   # many small files: the warm case
set -euo pipefail
files=${1:-1024}
size=${2:-1048576}
podium=$(cd "$(dirname "$0")/.." && pwd)/target/release/podium
dir=$(mktemp -d /tmp/podium-hash-XXXX)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/data"
python3 - "$dir/data" "$files" "$size" <<'PY'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    sub = os.path.join(d, f"{i // 1000:03d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"{i:06d}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
# Files modified within 2 s of hashing are not trusted by the stat cache (racy timestamps).
sleep 3
cat > "$dir/p.toml" <<'TOML'
[inputs.data]
path = "data"
[stages.s]
op = "exec"
cmd = "echo ${inputs.data}"
TOML
cd "$dir"
sync
t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
echo "files=$files bytes_per_file=$size total=$((files * size / 1048576)) MiB (page cache warm for both)"
find data -type f -print0 | xargs -0 cat > /dev/null
b3=$(t sh -c 'find data -type f -print0 | xargs -0 b3sum --num-threads 2')
cold=$(t "$podium" plan -f p.toml)
# Warm: the median of 5. `find -printf` stats every file too (single-threaded):
# the floor for a warm check, which must stat each file to see an in-place edit.
median() { sort -n | sed -n 3p; }
warm=$(for _ in 1 2 3 4 5; do t "$podium" plan -f p.toml; done | median)
stat_floor=$(for _ in 1 2 3 4 5; do t find data -type f -printf '%s %T@ %C@ %i\n'; done | median)
echo "b3sum:               ${b3}s"
echo "podium plan, cold:   ${cold}s"
echo "podium plan, warm:   ${warm}s (median of 5)"
echo "find, stat only:     ${stat_floor}s (median of 5)"
