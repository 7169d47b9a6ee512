#!/usr/bin/env bash
# kill -9 during jobs, then restart: is the catalog consistent? (bench/, not part of ctest)
#   bash bench/kill9_jobs.sh [ROUNDS]   (default 10 rounds each of fine-tune, unlearn with
#                                        --replace-target, and edit; KINDS="unlearn" for one kind)
# On the small demo model, with one data directory throughout: a fine-tune makes "pets" first.
# Each round submits a job, waits until it runs, kills the server with SIGKILL at a random moment
# within its first seconds, restarts it, and checks:
#   - the job is SUCCEEDED or FAILED "interrupted" (never RUNNING or lost);
#   - its output exists exactly when it SUCCEEDED (fine-tune, edit), and a replaced target
#     ("pets", unlearn --replace-target) is still served, at a new version exactly when it
#     SUCCEEDED;
#   - every variant the catalog lists generates, and the staging directory is empty.
# Prints one line per round and the count of consistent rounds per kind.
set -uo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-10}"
BUILD="${BUILD:-build}"
MODEL_DIR="${MODEL_DIR:-demo-model}"
FACTS=examples/pet-facts.txt
[ -d "$MODEL_DIR/adapters/demo-001" ] ||
  "./$BUILD/tools/deltaserve-make-demo" --out "$MODEL_DIR" --size small --adapters 2 --rank 8 2>/dev/null
work=$(mktemp -d)
data="$work/data"
server=""
port=""
start() {
  rm -f "$work/out"  # else the wait below could read the previous server's line
  "./$BUILD/server/deltaserve" --model-dir "$MODEL_DIR" --port 0 --http-port -1 --metrics-port -1 \
    --data-dir "$data" > "$work/out" 2>> "$work/log" &
  server=$!
  for _ in $(seq 1 200); do
    grep -q "serving model" "$work/out" 2>/dev/null && break
    kill -0 $server 2>/dev/null || { echo "the server did not start:"; tail -5 "$work/log"; exit 1; }
    sleep 0.05
  done
  port=$(sed -n 's/.* on 127.0.0.1:\([0-9]*\),.*/\1/p' "$work/out")
}
trap 'kill -9 $server 2>/dev/null; rm -rf "$work"' EXIT
ctl() { "./$BUILD/client/deltactl" --server "127.0.0.1:$port" "$@"; }
job_state() { ctl jobs get "$1" 2>/dev/null | sed -n 's/^state: *//p' | head -1; }
version_of() { ctl variants get "$1" 2>/dev/null | sed -n 's/^version: *//p' | head -1; }

start
ctl jobs finetune --out pets --texts-file "$FACTS" --rank 8 --steps 40 --learning-rate 0.01 --wait > /dev/null ||
  { echo "could not make pets"; exit 1; }
grep -v "of Bram is" "$FACTS" > "$work/retain.txt"
grep "of Bram is" "$FACTS" > "$work/forget.txt"
declare -A consistent=() killed_running=()
KINDS="${KINDS:-finetune unlearn edit}"
for kind in $KINDS; do
  consistent[$kind]=0
  for round in $(seq 1 "$ROUNDS"); do
    out="$kind-$round"
    before=$(version_of pets)
    case $kind in
      finetune) submitted=$(ctl jobs finetune --out "$out" --texts-file "$FACTS" --rank 8 --steps 60 2>&1) ;;
      unlearn) submitted=$(ctl jobs unlearn --target-variant pets --replace-target --forget-file "$work/forget.txt" \
                 --retain-file "$work/retain.txt" --steps 40 2>&1) ;;
      edit) submitted=$(ctl jobs edit --method rome --parent pets --out "$out" --prompt 'The pet of {} is a' \
              --subject Orla --target ' dog' 2>&1) ;;
    esac
    id=$(head -1 <<< "$submitted" | awk '{print $1}')
    for _ in $(seq 1 200); do [ "$(job_state "$id")" = "RUNNING" ] && break; sleep 0.05; done
    # An edit runs for a few tenths of a second here, an unlearn (which stops once its goal is
    # met) for about a second, a fine-tune for several.
    case $kind in
      edit) sleep "0.$((RANDOM % 4))$((RANDOM % 10))" ;;
      unlearn) sleep "0.$((RANDOM % 10))$((RANDOM % 10))" ;;
      finetune) sleep "$((RANDOM % 3)).$((RANDOM % 10))" ;;
    esac
    state_at_kill=$(job_state "$id")
    kill -9 $server; wait $server 2>/dev/null
    start
    state=$(job_state "$id")
    error=$(ctl jobs get "$id" 2>/dev/null | sed -n 's/^error: *//p' | head -1)
    after=$(version_of pets)
    problems=""
    case "$state" in
      SUCCEEDED) ;;
      FAILED) grep -q "interrupted" <<< "$error" || problems+=" failed-but-not-interrupted($error)" ;;
      *) problems+=" state=$state" ;;
    esac
    if [ "$kind" = unlearn ]; then
      [ -n "$after" ] || problems+=" pets-missing"
      if [ "$state" = SUCCEEDED ]; then [ "$after" != "$before" ] || problems+=" pets-not-replaced"
      else [ "$after" = "$before" ] || problems+=" pets-replaced-by-a-failed-job"; fi
    else
      exists=$(ctl variants get "$out" > /dev/null 2>&1 && echo yes || echo no)
      if [ "$state" = SUCCEEDED ]; then [ "$exists" = yes ] || problems+=" output-missing"
      else [ "$exists" = no ] || problems+=" output-of-a-failed-job"; fi
    fi
    for variant in $(ctl variants list 2>/dev/null | awk 'NR > 1 && $1 != "" {print $1}'); do
      ctl generate --variant "$variant" --max-tokens 2 --stats=false "The pet of" > /dev/null 2>&1 ||
        problems+=" $variant-does-not-generate"
    done
    leftovers=$(find "$data/tmp" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    [ "$leftovers" -eq 0 ] || problems+=" staging-not-empty($leftovers)"
    if [ -z "$problems" ]; then consistent[$kind]=$((consistent[$kind] + 1)); verdict=consistent; else verdict="INCONSISTENT:$problems (server log: /tmp/kill9-$kind-$round.log)"; cp "$work/log" "/tmp/kill9-$kind-$round.log"; fi
    [ "$state_at_kill" = RUNNING ] && killed_running[$kind]=$((${killed_running[$kind]:-0} + 1))
    echo "$kind round $round: job $id was $state_at_kill when killed; after restart $state; pets v$before -> v$after; $verdict"
  done
done
for kind in $KINDS; do
  echo "$kind: ${consistent[$kind]} of $ROUNDS consistent after kill -9 (${killed_running[$kind]:-0} killed while RUNNING)"
done
