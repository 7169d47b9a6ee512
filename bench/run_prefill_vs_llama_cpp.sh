#!/usr/bin/env bash
# Prefill throughput side by side with llama.cpp on the same weights (the medium demo model,
# float32 against llama.cpp's F32; CPU): for each prompt length in LENGTHS (512,2048,4000: the model's
# context is 4,096 tokens including the generated one), one
# prompt alone, timed to its first token, in deltaserve's engine (deltaserve-bench-prefill-stall
# with no other streams, --max-batch-tokens 2048 as the server's default) and in llama.cpp
# (node-llama-cpp from the npm registry, installed into a temporary folder and removed afterwards;
# batch size min(N, 2048)). Prints prompt tokens/s of each and deltaserve / llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/llama_cpp_install.sh
LENGTHS=${LENGTHS:-512,2048,4000}
MODEL_DIR=build/bench-medium
bash scripts/build > /dev/null
[ -f "$MODEL_DIR/config.json" ] || ./build/tools/deltaserve-make-demo --out "$MODEL_DIR" --size medium 2>/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
install_node_llama_cpp "$work" bench/llama_cpp_prefill.mjs
./build/tools/deltaserve-to-gguf --model-dir "$MODEL_DIR" --out "$work/model.gguf" --type f32 > /dev/null
vocab=$(sed -n 's/.*"vocab_size": *\([0-9]*\).*/\1/p' "$MODEL_DIR/config.json")
theirs=$(cd "$work" && node llama_cpp_prefill.mjs "$work/model.gguf" "$vocab" "$LENGTHS")
echo "$theirs"
printf "%-8s %16s %16s %8s\n" tokens "deltaserve tok/s" "llama.cpp tok/s" ratio
for length in ${LENGTHS//,/ }; do
  ours=$(./build/bench/deltaserve-bench-prefill-stall --model-dir "$MODEL_DIR" --streams 0 --targets-ms 0 \
    --prompt-tokens "$length" | awk '$1 == "off" {print $(NF-3)}')
  their_s=$(echo "$theirs" | awk -v n="$length" '$1 == "prefill" && $2 == n {print $3}')
  awk -v n="$length" -v ms="$ours" -v s="$their_s" 'BEGIN {
    printf "%-8d %16.1f %16.1f %8.2f\n", n, n / (ms / 1000), n / s, (n / (ms / 1000)) / (n / s) }'
done
