#!/usr/bin/env bash
# Every binary's --help is complete: it starts with a usage line and lists every flag the binary
# defines (all flags of --helpfull outside Abseil's own), each with its help text.
#   check_help.sh BINARY...
set -uo pipefail
fail=0
for binary in "$@"; do
  name=$(basename "$binary")
  help=$("$binary" --help 2>&1)
  full=$("$binary" --helpfull 2>&1)
  first=$(head -1 <<< "$help")
  [[ "$first" == "$name: "?* ]] || { echo "$name: --help does not start with a usage line: $first"; fail=1; }
  ours=$(awk '/^  Flags from / {keep = ($3 !~ /absl\//)} keep && /^    --/ {print $1}' <<< "$full")
  [ -n "$ours" ] || { echo "$name: --helpfull lists no flags of its own"; fail=1; }
  for flag in $ours; do
    grep -q -- "^    $flag " <<< "$help" || { echo "$name: --help lacks $flag"; fail=1; }
    grep -q -- "^    $flag ([^)]" <<< "$help" || { echo "$name: $flag has no help text"; fail=1; }
  done
  echo "$name: --help lists $(wc -w <<< "$ours") flags"
done
exit $fail
