#!/usr/bin/env bash
# Merge benchmarks on the medium demo model with 8 of its rank-16 adapters: first each method in
# process (time, peak memory against the estimate a job reserves, worst re-compression error),
# then the same merges as jobs on a real server on 127.0.0.1 while a client generates, with
# generation latency during each job as a ratio to latency alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build > /dev/null
MODEL_DIR=build/bench-medium
[ -f "$MODEL_DIR/config.json" ] || ./build/tools/deltaserve-make-demo --out "$MODEL_DIR" --size medium 2>/dev/null
[ -d "$MODEL_DIR/adapters/demo-007" ] || ./build/tools/deltaserve-make-demo --out "$MODEL_DIR" --size medium \
  --adapters 8 --rank 16 2>/dev/null
echo "== merges in process (medium demo model, rank-16 adapters, output rank 16)"
./build/bench/deltaserve-bench-merge --model-dir "$MODEL_DIR" --adapters-dir "$MODEL_DIR/adapters"
echo "== merges as jobs beside serving (real server on 127.0.0.1, default job settings)"
data=$(mktemp -d)
out="$data/stdout"
mkdir -p "$data/adapters"
for i in 0 1 2 3 4 5 6 7; do ln -s "$PWD/$MODEL_DIR/adapters/demo-00$i" "$data/adapters/demo-00$i"; done
./build/server/deltaserve --model-dir "$MODEL_DIR" --adapter-dir "$data/adapters" --port 0 --metrics-port -1 \
  --data-dir "$data/state" > "$out" 2> "$data/log" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 300); do grep -q "serving model" "$out" && break; sleep 0.1; done
target=$(grep -o "127.0.0.1:[0-9]*" "$out")
./build/bench/deltaserve-bench-jobs --target "$target"
