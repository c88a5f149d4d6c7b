#!/usr/bin/env bash
# Run every fuzz target (or the ones named) for a bounded time; exit non-zero if any crashed.
#
#   fuzz/run-bounded.sh [SECONDS] [TARGET...]      (default: 20 seconds, every target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). Builds on the stable toolchain with no
# sanitizer (`-s none`) and without trace-compares instrumentation (`--no-trace-compares`: the
# store parser's zero-header scans make it several times slower, for no coverage gained here);
# debug assertions (overflow checks) are on, as cargo fuzz does by default. The committed seeds
# in corpus/TARGET are read, never written: new inputs go to a scratch directory. A crashing
# input is kept in fuzz/artifacts/TARGET/; reproduce with
#   cargo fuzz run -s none --no-trace-compares TARGET fuzz/artifacts/TARGET/crash-...
# FSS_FUZZ_STRICT=0 turns off the reopen-after-append checks (see src/lib.rs).
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo fuzz build -s none --no-trace-compares || exit 1
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "corpus/$t"
    echo "== fuzz $t for ${secs}s"
    if ! cargo fuzz run -s none --no-trace-compares "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        2>"$work/$t.log"; then
        tail -n 60 "$work/$t.log"
        failed+=("$t")
    else
        grep -E '^(Done|stat::number_of_executed_units)' "$work/$t.log" || true
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: ${targets[*]}: no crash in ${secs}s each"
