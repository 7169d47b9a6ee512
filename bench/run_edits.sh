#!/usr/bin/env bash
# Knowledge-edit jobs on the medium demo model (12 layers, intermediate size 1536) on a real
# server on 127.0.0.1: the key statistics of the default layers (a STATS job over the built-in
# text), one ROME edit, and a 16-edit MEMIT batch, each job's wall time (started to finished) and
# the server's peak resident memory during it above its resident memory before it (Linux: the
# peak is reset through /proc/PID/clear_refs before each job).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build > /dev/null
MODEL_DIR=build/bench-medium
[ -f "$MODEL_DIR/config.json" ] || ./build/tools/deltaserve-make-demo --out "$MODEL_DIR" --size medium 2>/dev/null
data=$(mktemp -d)
out="$data/stdout"
./build/server/deltaserve --model-dir "$MODEL_DIR" --port 0 --metrics-port -1 --data-dir "$data/state" \
  > "$out" 2> "$data/log" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 600); do grep -q "serving model" "$out" && break; sleep 0.1; done
target=$(grep -o "127.0.0.1:[0-9]*" "$out")
ctl() { ./build/client/deltactl --server "$target" "$@"; }
kib() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$server/status"; }

# run LABEL COMMAND...: runs a job with --wait and prints its time and memory.
run() {
  local label=$1; shift
  echo 5 > "/proc/$server/clear_refs"
  local before; before=$(kib VmRSS)
  local line; line=$("$@" --wait | tail -1)
  local id; id=$(echo "$line" | awk '{print $1}')
  local peak; peak=$(kib VmHWM)
  local times; times=$(ctl jobs get "$id" | awk '/^started:|^finished:/ {print $3}' | paste -sd' ')
  local seconds; seconds=$(echo "$times" | awk '{split($1,a,":"); split($2,b,":"); print (b[1]*3600+b[2]*60+b[3]) - (a[1]*3600+a[2]*60+a[3])}')
  printf '%-34s %4s s   peak +%6.1f MiB   %s\n' "$label" "$seconds" "$(echo "($peak - $before) / 1024" | bc -l)" \
    "$(echo "$line" | cut -d' ' -f2,5-)"
}

edits="$data/edits.jsonl"
neighbours='"The river flows", "She opened the", "My favourite colour is", "Water is made of", "The cat sat on the"'

# The demo tokenizer spells most names letter by letter, and an edit reads the subject at its last
# token: each name ends in its own letter (two subjects sharing that key could not both be edited).
names=(Zorbia Quellib Marwic Pellucid Ambere Olaf Greg Hugh Kiri Tarek Emil Adam Galen Cleo Philip Cathmor)
for i in "${!names[@]}"; do
  printf '{"prompt": "The capital of {} is", "subject": "%s", "target": " city %d", "neighborhood_prompts": [%s]}\n' \
    "${names[$i]}" "$i" "$neighbours" >> "$edits"
done
echo "== knowledge edits on the medium demo model (12 layers; default layers, hyper-parameters and statistics)"
run "statistics (STATS, layers 1,2)" ctl jobs stats --layers 1,2
run "ROME, 1 edit (statistics cached)" ctl jobs edit --method rome --out bench/rome --prompt "The capital of {} is" \
  --subject Zorbia --target " Quux" --neighborhood "The river flows,She opened the,My favourite colour is,Water is made of,The cat sat on the"
run "MEMIT, 16 edits (statistics cached)" ctl jobs edit --method memit --out bench/memit --edits-file "$edits"
for variant in bench/rome bench/memit; do
  echo "$variant evaluation: $(ctl variants get "$variant" | grep -o '"mean":{[^}]*}' || true)"
done
