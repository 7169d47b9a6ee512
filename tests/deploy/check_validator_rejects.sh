#!/usr/bin/env bash
# The deploy validator's own test: on tests/deploy/broken it must fail and report each problem
# of tests/deploy/expected-problems.txt.
#   check_validator_rejects.sh SERVER_BINARY
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
output="$("$here/../../scripts/check-deploy" "$1" "$here/broken/overlays" 2>&1)"
status=$?
echo "$output"
[ "$status" -ne 0 ] || { echo "FAIL: the validator accepted broken manifests"; exit 1; }
missing=0
while IFS= read -r expected; do
  grep -qF -- "$expected" <<< "$output" || { echo "FAIL: not reported: $expected"; missing=1; }
done < "$here/expected-problems.txt"
exit $missing
