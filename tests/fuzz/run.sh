#!/usr/bin/env bash
# run.sh — run every libFuzzer harness for a while, one after the other, and
# fail on any finding. `make fuzz` builds the harnesses and calls this.
#
#   tests/fuzz/run.sh BUILD_DIR [HARNESS ...]
#
# Environment:
#   FUZZ_SECONDS  how long each harness runs (default 60)
#   FUZZ_WORK     scratch directory for corpora and findings
#                 (default BUILD_DIR/fuzz-work)
#
# Each harness starts from its seeds in tests/fuzz/corpus/NAME, copied into
# FUZZ_WORK/corpus/NAME (which keeps what earlier runs found, so coverage
# grows from run to run; the checked-in seeds stay small). A finding is a
# nonzero exit or any crash-, leak-, timeout- or oom- file libFuzzer wrote
# to FUZZ_WORK/findings/NAME/: the run goes on with the other harnesses and
# then fails, naming the files. The executions of each harness and their
# total are printed at the end.
set -u

here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run.sh BUILD_DIR [HARNESS ...]}
shift
build=$(cd "$build" && pwd)
seconds=${FUZZ_SECONDS:-60}
work=${FUZZ_WORK:-$build/fuzz-work}

if [ $# -gt 0 ]; then
  harnesses=("$@")
else
  harnesses=()
  for src in "$here"/fuzz_*.c; do
    name=$(basename "$src" .c)
    harnesses+=("${name#fuzz_}")
  done
fi

# What each harness needs beyond the defaults: longer inputs where a
# message or a config file is long, the SQL dictionary for the lexer
# against the grammar.
options_for() {
  case "$1" in
    config) echo "-max_len=40000" ;;
    key) echo "-max_len=2048" ;;
    lexer_parser) echo "-max_len=2048 -dict=$here/lexer_parser.dict" ;;
    *) echo "" ;;
  esac
}

failed=()
total=0
summary=""
for name in "${harnesses[@]}"; do
  bin="$build/fuzz_$name"
  if [ ! -x "$bin" ]; then
    echo "fuzz: no harness $bin" >&2
    failed+=("$name (not built)")
    continue
  fi
  corpus="$work/corpus/$name"
  findings="$work/findings/$name"
  log="$work/logs/$name.log"
  mkdir -p "$corpus" "$findings" "$(dirname "$log")"
  rm -f "$findings"/*
  if [ -d "$here/corpus/$name" ]; then cp -n "$here/corpus/$name"/* "$corpus"/ 2>/dev/null; fi

  echo "fuzz: $name for ${seconds}s (corpus $corpus, log $log)"
  # -timeout: an input that takes 25 s is a hang, and a finding.
  # shellcheck disable=SC2046
  "$bin" -max_total_time="$seconds" -timeout=25 -print_final_stats=1 \
    -artifact_prefix="$findings/" $(options_for "$name") "$corpus" >"$log" 2>&1
  rc=$?

  runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -1)
  [ -n "$runs" ] || runs=0
  total=$((total + runs))

  found=$(find "$findings" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
    -o -name 'oom-*' \) | sort)
  status=ok
  if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
    status="FINDING (exit $rc)"
    failed+=("$name")
    echo "fuzz: $name: exit $rc; the end of $log:" >&2
    tail -n 40 "$log" >&2
    for f in $found; do echo "fuzz: $name: $f" >&2; done
  fi
  summary+=$(printf '%-14s %14s executions  %s' "$name" "$runs" "$status")$'\n'
  echo "fuzz: $name: $runs executions, $status"
done

echo
echo "fuzz: executions per harness (${seconds}s each)"
printf '%s' "$summary"
printf '%-14s %14s executions\n' "total" "$total"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: no finding"
