#!/usr/bin/env bash
# Offline hub ingest into PostgreSQL and into the embedded store, side by side (issue 18):
# bundles/s, peak RSS, database bytes per patient. Needs the release binaries and PostgreSQL on
# 127.0.0.1:5432 (trust); makes and drops its own database.
#   tests/benches/hub_pg_ingest.sh [PATIENTS]     (default 100000)
#   BACKENDS=postgres tests/benches/hub_pg_ingest.sh 909090     (one backend only)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
T=${CARGO_TARGET_DIR:-target}/release
W=$(mktemp -d)
DB=kerbside_bench_$$
trap 'psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1; rm -rf "$W"' EXIT
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $DB"
"$T/edge-hub" synth --patients "$N" --seed 1 --out "$W/p.ndjson" 2>/dev/null
"$T/edge-provision" ca init --fleet "$W/fleet" >/dev/null
# CPU seconds the whole machine has been busy (user, nice, system, irq, softirq from
# /proc/stat): around an ingest, minus the hub's own, it is the database server's share (plus
# whatever else ran: keep the machine otherwise idle).
busy() {
  awk -v t="$(getconf CLK_TCK)" '/^cpu / {printf "%.1f", ($2 + $3 + $4 + $7 + $8) / t}' /proc/stat
}
for kind in ${BACKENDS:-postgres embedded}; do
  args=()
  [ "$kind" = postgres ] && args=(--database "postgres://postgres@127.0.0.1:5432/$DB")
  "$T/edge-provision" hub --fleet "$W/fleet" --name 127.0.0.1 --listen 127.0.0.1:4433 \
    --admin 127.0.0.1:9443 --out "$W/hub-$kind" "${args[@]}" >/dev/null
  before=$(busy)
  /usr/bin/time -f "%e s wall, %U s user, %S s sys, peak RSS %M KiB" \
    "$T/edge-hub" ingest --config "$W/hub-$kind/hub.toml" "$W/p.ndjson" \
    2> >(grep -E "wall|accepted, " >&2) | sed "s/^/$kind: /"
  echo "$kind: the machine was busy $(echo "$(busy) - $before" | bc) s of CPU in all (hub + database + anything else)"
done
if [ -d "$W/hub-postgres" ]; then
  bytes=$(psql -h 127.0.0.1 -U postgres -d "$DB" -Atc "select pg_database_size(current_database())")
  echo "postgres: database $((bytes / 1048576)) MiB, $((bytes / N)) bytes per patient"
fi
[ -d "$W/hub-embedded/data" ] && echo "embedded: data_dir $(du -sm "$W/hub-embedded/data" | cut -f1) MiB"
true
