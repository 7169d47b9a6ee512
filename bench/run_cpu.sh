#!/usr/bin/env bash
# One command for the CPU benchmark: builds, writes the medium demo model and 512 rank-16
# adapters, runs the engine benchmark (decode vs bandwidth floor, concurrency ratios, K distinct
# adapters through the tiered adapter cache), then the gRPC load generator against a real
# server on 127.0.0.1 at 1, 4, 16 and 64 streams.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build > /dev/null
MODEL_DIR=build/bench-medium
[ -f "$MODEL_DIR/config.json" ] || ./build/tools/deltaserve-make-demo --out "$MODEL_DIR" --size medium 2>/dev/null
[ -d "$MODEL_DIR/adapters/demo-511" ] || ./build/tools/deltaserve-make-demo --out "$MODEL_DIR" --size medium \
  --adapters 512 --rank 16 2>/dev/null
echo "== engine benchmark (medium demo model; K distinct rank-16 adapters through the adapter cache)"
./build/bench/deltaserve-bench-engine --model-dir "$MODEL_DIR" --decode-tokens 128 \
  --adapters-dir "$MODEL_DIR/adapters" --adapter-counts 1,8,32,128,512 --adapter-requests 128 \
  --device-cache-adapters 64 --host-cache-adapters 128
echo "== gRPC load generator (medium demo model, real server on 127.0.0.1)"
out=$(mktemp)
./build/server/deltaserve --model-dir "$MODEL_DIR" --port 0 --metrics-port -1 --data-dir build/bench-data \
  --max-running-requests 64 > "$out" 2> "$out.log" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do grep -q "serving model" "$out" && break; sleep 0.1; done
target=$(grep -o "127.0.0.1:[0-9]*" "$out")
./build/bench/deltaserve-load --target "$target" --streams 1,4,16,64 --requests-per-stream 2 --max-tokens 64
