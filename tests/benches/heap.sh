#!/usr/bin/env bash
# Where the unit daemon's heap is at its peak during a cold sync: the daemon runs under
# heaptrack, built with glibc's malloc (the `system-allocator` feature; heaptrack cannot see
# mimalloc) into its own target folder, so the release binaries the other benchmarks use are
# untouched.
#
#   tests/benches/heap.sh [PATIENTS]      (default 100000; needs heaptrack: apt-get install heaptrack)
#   OUT=/tmp/heap                         heaptrack writes $OUT.PATIENTS.zst (default target/heap)
#
# Prints heaptrack's peak consumers; compare two sizes with
#   heaptrack_print -f F --flamegraph-cost-type peak -F stacks.txt
# (BENCHMARKS.md, issue 17 eleventh step, did that for 100,000 and 909,090).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
OUT=${OUT:-$PWD/target/heap}
command -v heaptrack >/dev/null || { echo "need heaptrack (apt-get install heaptrack)"; exit 1; }
cargo build --release --workspace --bins -q
cargo build --release -q -p edge-daemon --features system-allocator --target-dir target/heaptrack
# shellcheck source=tests/benches/unit-setup.sh
source tests/benches/unit-setup.sh
hub_ingest_and_serve
rm -f "$OUT.$N.zst"
start_unit "$PWD/target/heaptrack/release/edge-daemon" heaptrack -o "$OUT.$N"
t0=$SECONDS
wait_ready
echo "bench: $N records, searchable, after $(( SECONDS - t0 )) s under heaptrack" >&2
# heaptrack's wrapper is UNIT; the daemon is its child: stop the daemon so the data is written.
pkill -INT -f "target/heaptrack/release/edge-daemon run --config $T/unit/edge.toml" || true
wait "$UNIT" 2>/dev/null || true
heaptrack_print -f "$OUT.$N.zst" --print-peaks 1 --print-allocators 0 --print-temporary 0 --print-leaks 0 --peak-limit 12 -s 0 2>/dev/null | head -120
