#!/usr/bin/env bash
# deltaserve side by side with llama.cpp on the same weights, in one run (CPU):
#  - the medium demo model exported to GGUF float32 (deltaserve-to-gguf), and 8 of its rank-16
#    adapters as GGUF LoRA adapters;
#  - llama.cpp through node-llama-cpp's prebuilt CPU binaries, installed from the npm registry
#    into a temporary folder (never into the repository) and removed afterwards;
#  - single-stream greedy decode tokens/s of each, and the throughput of 8 concurrent streams,
#    each with a different adapter (deltaserve batches them in one step; llama.cpp runs one
#    context per adapter);
#  - the first greedy tokens of each, which must agree if the export is right.
# Prints the ratios deltaserve / llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${TOKENS:-128}
bash scripts/build > /dev/null
MODEL_DIR=build/bench-medium
[ -f "$MODEL_DIR/config.json" ] || ./build/tools/deltaserve-make-demo --out "$MODEL_DIR" --size medium 2>/dev/null
[ -d "$MODEL_DIR/adapters/demo-007" ] || ./build/tools/deltaserve-make-demo --out "$MODEL_DIR" --size medium \
  --adapters 8 --rank 16 2>/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

adapters=$(printf "$MODEL_DIR/adapters/demo-%03d," 0 1 2 3 4 5 6 7)
./build/tools/deltaserve-to-gguf --model-dir "$MODEL_DIR" --out "$work/model.gguf" \
  --adapters "${adapters%,}" --adapters-out "$work"

echo "== installing node-llama-cpp (npm registry) into $work"
cp bench/llama_cpp_bench.mjs "$work/"
(cd "$work" && echo '{"name": "llama-cpp-bench", "private": true, "type": "module"}' > package.json &&
  NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --no-audit --no-fund --omit=optional --loglevel=error \
    node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1 > /dev/null)

echo "== deltaserve (engine benchmark)"
ours=$(./build/bench/deltaserve-bench-engine --model-dir "$MODEL_DIR" --decode-tokens "$TOKENS" --decode-rounds 3 \
  --concurrency 1 --adapters-dir "$MODEL_DIR/adapters" --adapter-counts 8 --adapter-requests 8 \
  --adapter-tokens "$TOKENS")
echo "$ours"
prompt=$(echo "$ours" | awk '/^prompt_token_ids/ {print $2}')
our_ids=$(echo "$ours" | awk '/^greedy_token_ids/ {print $2}')
our_ms=$(echo "$ours" | sed -n 's/^batch-1 decode, median of [0-9]* rounds: \([0-9.]*\) ms\/token.*/\1/p')
our_mixed=$(echo "$ours" | awk '$1 == 8 && NF == 8 {print $3}')

echo "== llama.cpp (node-llama-cpp)"
theirs=$(cd "$work" && node llama_cpp_bench.mjs "$work/model.gguf" "$prompt" "$TOKENS" \
  $(printf "$work/demo-%03d.gguf " 0 1 2 3 4 5 6 7))
echo "$theirs"
their_ids=$(echo "$theirs" | awk '/^greedy_token_ids/ {print $2}')
their_single=$(echo "$theirs" | awk '/^single_stream_tokens_per_second/ {print $2}')
their_mixed=$(echo "$theirs" | awk '/^mixed_adapters_tokens_per_second/ {print $2}')

echo "== side by side (same weights, same prompt ids, greedy, $TOKENS tokens)"
if [ "$our_ids" = "$their_ids" ]; then echo "greedy tokens agree: $our_ids"
else echo "greedy tokens DIFFER: deltaserve $our_ids / llama.cpp $their_ids"; fi
awk -v ms="$our_ms" -v theirs="$their_single" 'BEGIN {
  printf "single-stream decode: deltaserve %.1f tokens/s, llama.cpp %.1f tokens/s, ratio %.2f\n", 1000 / ms, theirs, 1000 / ms / theirs }'
awk -v ours="$our_mixed" -v theirs="$their_mixed" 'BEGIN {
  printf "8 streams, 8 different adapters: deltaserve %.1f tokens/s, llama.cpp %.1f tokens/s, ratio %.2f\n", ours, theirs, ours / theirs }'
