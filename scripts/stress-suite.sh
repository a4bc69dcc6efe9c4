#!/usr/bin/env bash
# Run `make test` several times in a row, each on a fresh clone of this repository at the commit
# HEAD named when the script started (commits made meanwhile are not picked up), while stress-ng
# keeps every core busy: the suite must not flake on a loaded machine.
#
#   scripts/stress-suite.sh [RUNS]        (default 5; stops at the first failed run)
#
# Each run's output goes to $STRESS_LOGS/run-<k>.txt (default /tmp/pht-stress-logs); a line per
# run says how long it took and whether it passed. A failed run's clone stays in $STRESS_CLONE
# (default /tmp/pht-stress-clone); otherwise nothing is left. Takes about 30-45 minutes per run
# on 2 cores.
set -euo pipefail

# All in one function, read whole before it runs: bash reads a script as it goes, so editing
# this file during a run would otherwise make it run the edited text from the old offset.
main() {
  runs="${1:-5}"
  repo="$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)"
  logs="${STRESS_LOGS:-/tmp/pht-stress-logs}"
  clone="${STRESS_CLONE:-/tmp/pht-stress-clone}"
  commit="$(git -C "$repo" rev-parse HEAD)"
  command -v stress-ng >/dev/null || { echo "stress-ng is missing: run scripts/bootstrap.sh" >&2; exit 2; }
  mkdir -p "$logs"
  stress-ng --cpu "$(nproc)" --quiet &
  stress=$!
  verdict="passed"
  # The last clone (with its venv) goes too, unless its run failed: then it stays for a look.
  trap 'kill "$stress" 2>/dev/null || true; if [ "$verdict" = passed ]; then rm -rf "$clone"; fi' EXIT
  echo "commit ${commit:0:7}; stress-ng --cpu $(nproc) (pid $stress); logs in $logs"
  for k in $(seq 1 "$runs"); do
    rm -rf "$clone"
    git clone -q "$repo" "$clone"
    git -C "$clone" checkout -q --detach "$commit"
    start=$(date +%s)
    if (cd "$clone" && CI=true make test) >"$logs/run-$k.txt" 2>&1; then
      verdict="passed"
    else
      verdict="FAILED"
    fi
    took=$(( $(date +%s) - start ))
    summary=$(grep -E '^=+ .*(passed|failed|error).* =+$' "$logs/run-$k.txt" | tail -1 || true)
    printf 'run %d/%d: %s in %dm%02ds  %s\n' "$k" "$runs" "$verdict" $((took / 60)) $((took % 60)) "$summary"
    [ "$verdict" = passed ] || exit 1
  done
}

main "$@"
exit
