#!/usr/bin/env bash
# deltaserve side by side with llama.cpp on the same weights at equal width, in one run (CPU):
#  - a model exported to GGUF (deltaserve-to-gguf) at each compared width, and 8 of its rank-16
#    adapters as GGUF LoRA adapters;
#  - llama.cpp through node-llama-cpp's prebuilt CPU binaries, installed from the npm registry
#    into a temporary folder (never into the repository) and removed afterwards;
#  - per width pair: single-stream greedy decode tokens/s of each, and the throughput of 8
#    concurrent streams, each with a different adapter (deltaserve batches them in one step;
#    llama.cpp runs one context per adapter);
#  - the first greedy tokens of each, which must agree if the export is right (narrow widths round
#    differently in the two engines, so there a late disagreement is possible and is reported).
# Prints the ratios deltaserve / llama.cpp.
#
# MODEL=medium (default: the medium demo model, float32 against llama.cpp's F32) or MODEL=7b (the
# Llama-2-7B layer shapes, LAYERS=2 by default, stored in bf16; pairs: our bfloat16 and float16
# against F16, our int8 against Q8_0). PAIRS overrides the pairs, e.g. "float16:f16 int8:q8_0".
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/llama_cpp_install.sh
TOKENS=${TOKENS:-128}
MODEL=${MODEL:-medium}
bash scripts/build > /dev/null
if [ "$MODEL" = medium ]; then
  MODEL_DIR=build/bench-medium
  MAKE=(--size medium)
  PAIRS=${PAIRS:-"float32:f32"}
elif [ "$MODEL" = 7b ]; then
  LAYERS=${LAYERS:-2}
  MODEL_DIR=build/bench-7b-shape-$LAYERS
  MAKE=(--size llama2-7b-shape --layers "$LAYERS" --dtype bfloat16)
  PAIRS=${PAIRS:-"bfloat16:f16 float16:f16 int8:q8_0"}
else
  echo "MODEL must be medium or 7b" >&2
  exit 2
fi
[ -f "$MODEL_DIR/config.json" ] || ./build/tools/deltaserve-make-demo --out "$MODEL_DIR" "${MAKE[@]}" 2>/dev/null
[ -d "$MODEL_DIR/adapters/demo-007" ] || ./build/tools/deltaserve-make-demo --out "$MODEL_DIR" "${MAKE[@]}" \
  --adapters 8 --rank 16 2>/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

install_node_llama_cpp "$work" bench/llama_cpp_bench.mjs

adapters=$(printf "$MODEL_DIR/adapters/demo-%03d," 0 1 2 3 4 5 6 7)
summary=""
for pair in $PAIRS; do
  ours_width=${pair%%:*}
  gguf_type=${pair##*:}
  echo "== deltaserve --weight-dtype $ours_width against llama.cpp $gguf_type"
  rm -f "$work"/*.gguf
  ./build/tools/deltaserve-to-gguf --model-dir "$MODEL_DIR" --out "$work/model.gguf" --type "$gguf_type" \
    --adapters "${adapters%,}" --adapters-out "$work"
  ours=$(./build/bench/deltaserve-bench-engine --model-dir "$MODEL_DIR" --weight-dtype "$ours_width" \
    --decode-tokens "$TOKENS" --decode-rounds 3 --concurrency 1 --adapters-dir "$MODEL_DIR/adapters" \
    --adapter-counts 8 --adapter-requests 8 --adapter-tokens "$TOKENS")
  echo "$ours"
  prompt=$(echo "$ours" | awk '/^prompt_token_ids/ {print $2}')
  our_ids=$(echo "$ours" | awk '/^greedy_token_ids/ {print $2}')
  our_ms=$(echo "$ours" | sed -n 's/^batch-1 decode, median of [0-9]* rounds: \([0-9.]*\) ms\/token.*/\1/p')
  our_floor=$(echo "$ours" | sed -n 's/.*floor\/measured = \([0-9.]*\).*/\1/p')
  our_mixed=$(echo "$ours" | awk '$1 == 8 && NF == 8 {print $3}')
  theirs=$(cd "$work" && node llama_cpp_bench.mjs "$work/model.gguf" "$prompt" "$TOKENS" \
    $(printf "$work/demo-%03d.gguf " 0 1 2 3 4 5 6 7))
  echo "$theirs"
  their_ids=$(echo "$theirs" | awk '/^greedy_token_ids/ {print $2}')
  their_single=$(echo "$theirs" | awk '/^single_stream_tokens_per_second/ {print $2}')
  their_mixed=$(echo "$theirs" | awk '/^mixed_adapters_tokens_per_second/ {print $2}')
  agree=$(awk -v a="$our_ids" -v b="$their_ids" 'BEGIN { n = split(a, x, ","); split(b, y, ",");
    same = 0; while (same < n && x[same + 1] == y[same + 1]) same++; print same "/" n }')
  summary+=$(awk -v w="$ours_width" -v t="$gguf_type" -v ms="$our_ms" -v theirs="$their_single" -v f="$our_floor" \
    -v om="$our_mixed" -v tm="$their_mixed" -v agree="$agree" 'BEGIN {
    printf "%-9s vs %-5s  1 stream: %7.1f vs %7.1f tokens/s = %.2f (ours at %.2f of the bandwidth floor)   8 streams, 8 adapters: %7.1f vs %7.1f = %.2f   first greedy tokens equal: %s\n",
      w, t, 1000 / ms, theirs, 1000 / ms / theirs, f, om, tm, om / tm, agree }')$'\n'
done
echo "== side by side ($MODEL_DIR, same prompt ids, greedy, $TOKENS tokens; deltaserve vs llama.cpp)"
printf "%s" "$summary"
