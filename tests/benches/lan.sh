#!/usr/bin/env bash
# LAN API benchmark, side by side with nginx serving the same JSON bytes from a static file over
# HTTPS (the same certificate and key as the unit's LAN listener) and pouchdb-server (in memory,
# plain HTTP: it has no TLS) serving the same JSON as a document (GET /db/doc).
#
#   tests/benches/lan.sh [PATIENTS]        (default 100000; needs root for apt-get the first time;
#                                           the pouchdb column needs node/npm, else it is skipped)
#   WRK_SECS=15                            seconds per wrk run (search runs for 2/3 of it)
#   SPLIT=1                                the servers (daemon, hub, nginx with one worker,
#                                          pouchdb-server) on CPU 0, wrk (one thread) on CPU 1,
#                                          from when the cold sync is done: the load generator
#                                          off the unit's core, as tablets reach a unit
#
# Real processes: edge-provision bundles, edge-hub serve, edge-daemon run (HTTPS, as a tablet
# reaches it; nginx is given the unit's own certificate), PATIENTS cached. Load from wrk (64
# connections, keep-alive):
#   1. throughput: closed loop for 15 s, daemon vs nginx vs pouchdb-server;
#   2. latency at ~1,000 req/s: each of 64 connections waits a random 0–128 ms between requests;
#   3. demographic search over the cache at ~500 req/s, then at ~50 req/s;
#   4. the daemon's peak RSS;
#   5. the hub at idle priority (SCHED_IDLE): closed loop, paced and search again, the unit doing
#      all its own work (upload included) with the cores to itself, as with a hub elsewhere;
#   6. the unit alone: the hub stopped (the unit's link down, its audit waiting in its journal),
#      closed loop and paced again, so the hub's share of these two cores is not in the figure.
# Every daemon lookup is a real, audited access: the audit event is fsync'd before the answer.
# Each request picks one of 1,000 shift tokens (TOKENS=n to change) and one of that token's own
# 15 patients (PER_TOKEN=n), so no token trips the per-token rate limit (100/s, burst 2,000) or
# the bulk-browse defence, and 15,000 different records are opened; nginx gets the same paths
# (every one answered with the same JSON file). Any non-2xx answer is counted and shown, so a
# refusal is never mistaken for a lookup.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk nginx >/dev/null; fi
fi
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then echo "need wrk and nginx (apt-get install wrk nginx)"; exit 1; fi
WRK_SECS=${WRK_SECS:-15}
SPLIT=${SPLIT:-0}
if [ "$SPLIT" = 1 ]; then
  command -v taskset >/dev/null || { echo "SPLIT=1 needs taskset (util-linux)"; exit 1; }
  [ "$(nproc)" -ge 2 ] || { echo "SPLIT=1 needs two CPUs"; exit 1; }
  WRK=(taskset -c 1 wrk -t1); NGX_WORKERS=1
else
  WRK=(wrk -t2); NGX_WORKERS=2
fi
# Pin a process and all its threads (and its children's) to CPU 0 in SPLIT mode.
pin() { [ "$SPLIT" = 1 ] || return 0; for p in "$@"; do taskset -a -p -c 0 "$p" >/dev/null; for c in $(pgrep -P "$p" || true); do taskset -a -p -c 0 "$c" >/dev/null; done; done; }
SEARCH_SECS=$(( WRK_SECS * 2 / 3 > 0 ? WRK_SECS * 2 / 3 : 1 ))
PSB=$PWD/tests/benches/couch/node_modules/.bin/pouchdb-server
POUCH=0
if command -v npm >/dev/null && (cd tests/benches/couch && { npm ci --no-audit --no-fund --ignore-scripts >/dev/null 2>&1 || npm install --no-audit --no-fund --ignore-scripts >/dev/null; }) && [ -x "$PSB" ]; then
  POUCH=1
else
  echo "bench: npm or pouchdb-server unavailable: the pouchdb column is skipped" >&2
fi
cargo build --release --workspace --bins -q
# shellcheck source=tests/benches/unit-setup.sh
source tests/benches/unit-setup.sh
NGX=127.0.0.1:$(port); PDB=127.0.0.1:$(port)
hub_ingest_and_serve
start_unit
wait_ready
pin "$UNIT" "$HUB"
NHS=$(python3 -c '
import sys,json
for line in open(sys.argv[1]):
    b=json.loads(line)
    for e in b["entry"]:
        r=e["resource"]
        if r["resourceType"]=="Patient":
            print(r["identifier"][0]["value"]); sys.exit(0)' "$T/synth.ndjson")
mkdir -p "$T/www"
curl -sk -H "Authorization: Bearer $TOKEN" "https://$LAN/v1/patients/$NHS" > "$T/www/p.json"
read -r FAMILY POSTCODE < <(python3 -c 'import sys,json;d=json.load(open(sys.argv[1]));print(d["patient"]["family"].replace(" ","%20"), d["patient"]["postcode"].split()[0])' "$T/www/p.json")
cat > "$T/nginx.conf" <<EOF
worker_processes $NGX_WORKERS;
pid $T/nginx.pid;
error_log $T/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen $NGX ssl;
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    root $T/www;
    location / { default_type application/json; try_files /p.json =404; }
  }
}
EOF
nginx -c "$T/nginx.conf" -p "$T"
PIDS+=("$(cat "$T/nginx.pid" 2>/dev/null || echo)")
pin "$(cat "$T/nginx.pid")"
PDOC="http://$PDB/summaries/$NHS"
if [ "$POUCH" = 1 ]; then
  echo "bench: pouchdb-server with the same summary as a document..." >&2
  head -n 5000 "$T/synth.ndjson" > "$T/head.ndjson"
  "$BIN/kerbside-summaries" "$T/head.ndjson" > "$T/docs.ndjson"
  mkdir -p "$T/pouch"
  (cd "$T/pouch" && exec "$PSB" -m -p "${PDB##*:}" >/dev/null 2>&1) & PID_POUCH=$!; PIDS+=("$PID_POUCH")
  for _ in $(seq 1 100); do curl -s "http://$PDB/" >/dev/null && break; sleep 0.2; done
  pin "$PID_POUCH"
  # A db of up to 5,000 summaries (kerbside-summaries, _id = NHS number), then the daemon's own
  # JSON for the looked-up patient as the document wrk fetches.
  python3 - "$PDB" "$NHS" "$T/docs.ndjson" "$T/www/p.json" <<'PY'
import json, sys, urllib.request
pdb, nhs, docs, pj = sys.argv[1:]
def req(method, url, body):
    r = urllib.request.Request(url, data=json.dumps(body).encode(), method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(r, timeout=600) as resp:
        return json.loads(resp.read())
base = f"http://{pdb}/summaries"
req("PUT", base, {})
batch = [d for d in map(json.loads, open(docs)) if d["_id"] != nhs]
for i in range(0, len(batch), 1000):
    req("POST", f"{base}/_bulk_docs", {"docs": batch[i:i + 1000]})
req("PUT", f"{base}/{nhs}", json.load(open(pj)))
PY
  curl -sf "$PDOC" > "$T/pouch.json"
fi
# Each token's own patients: PER_TOKEN NHS numbers from the cohort, none shared; wrk scripts
# with a random token and one of its own patients per request, paced or not (unit-setup.sh).
# The same scripts drive nginx (the token header is ignored there).
PER_TOKEN=${PER_TOKEN:-15}
mint_tokens "${TOKENS:-1000}" "$PER_TOKEN"
# The daemon's peak RSS so far is the cold sync's; reset the high-water mark (clear_refs 5)
# so the figure below is the peak under the lookup load alone.
SYNC_RSS=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$UNIT/status")
echo 5 > "/proc/$UNIT/clear_refs" 2>/dev/null || echo "bench: cannot reset the peak RSS; the figure includes the cold sync" >&2
echo "bench: closed-loop throughput (64 connections, $WRK_SECS s)..." >&2
D=$("${WRK[@]}" -c64 -d"$WRK_SECS"s --latency -s "$T/tokens.lua" "https://$LAN" | summ)
G=$("${WRK[@]}" -c64 -d"$WRK_SECS"s --latency -s "$T/tokens.lua" "https://$NGX" | summ)
[ "$POUCH" = 1 ] && P=$("${WRK[@]}" -c64 -d"$WRK_SECS"s --latency "$PDOC" | summ)
# The closed loop left ~100,000 audit events to upload: measure the paced latency in the steady
# state, once the unit has uploaded them (a unit whose uploader is catching up shares the cores
# and the disk with it), and say how long that took.
DRAIN=$(drained)
echo "bench: paced ~1,000 req/s (the audit backlog took ${DRAIN} s to upload)..." >&2
DP=$("${WRK[@]}" -c64 -d"$WRK_SECS"s --latency -s "$T/tokens-paced.lua" "https://$LAN" | summ)
GP=$("${WRK[@]}" -c64 -d"$WRK_SECS"s --latency -s "$T/tokens-paced.lua" "https://$NGX" | summ)
[ "$POUCH" = 1 ] && PP=$("${WRK[@]}" -c64 -d"$WRK_SECS"s --latency -s "$T/pace.lua" "$PDOC" | summ)
echo "bench: search..." >&2
# A search script whose connections wait a random 0..$1 ms between requests.
search_lua() {
  cat <<EOF
local tokens = {}
for line in io.lines("$T/tokens.txt") do tokens[#tokens + 1] = line end
math.randomseed(os.time())
request = function()
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[math.random(#tokens)]})
end
function delay() return math.random(0, $1) end
EOF
}
search_lua 128 > "$T/search.lua"
search_lua 1280 > "$T/search-slow.lua"
SEARCH_URL="https://$LAN/v1/search?family=$FAMILY&postcode=$POSTCODE"
S=$("${WRK[@]}" -c32 -d"$SEARCH_SECS"s --latency -s "$T/search.lua" "$SEARCH_URL" | summ)
# The same search at a tenth of the rate: what one search costs when it does not queue behind
# others for the two cores (a unit's tablets search a few times a minute, not 500 times a
# second).
SS=$("${WRK[@]}" -c32 -d"$SEARCH_SECS"s --latency -s "$T/search-slow.lua" "$SEARCH_URL" | summ)
MATCHED=$(curl -sk -H "Authorization: Bearer $(head -1 "$T/tokens.txt")" "$SEARCH_URL" | python3 -c 'import sys,json;print(json.load(sys.stdin).get("matched","?"))' 2>/dev/null || echo "?")
RSS=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$UNIT/status")
# The hub at idle priority (SCHED_IDLE, every thread): it runs only when the two cores have
# nothing else to run, so the unit does all of its own work, the audit upload included, with
# the cores to itself, as a unit in service does (its hub is in a data centre). The hub stores
# the events in the idle time, or after the run; in the closed loop it falls behind and the
# unit's uploader waits on its two batches in flight, as it would on a slow hub.
echo "bench: the hub at idle priority..." >&2
IDLE=0
if command -v chrt >/dev/null && chrt --idle -a -p 0 "$HUB" >/dev/null 2>&1; then
  IDLE=1
  DI=$("${WRK[@]}" -c64 -d"$WRK_SECS"s --latency -s "$T/tokens.lua" "https://$LAN" | summ)
  IDRAIN=$(drained)
  DIP=$("${WRK[@]}" -c64 -d"$WRK_SECS"s --latency -s "$T/tokens-paced.lua" "https://$LAN" | summ)
  SI=$("${WRK[@]}" -c32 -d"$SEARCH_SECS"s --latency -s "$T/search.lua" "$SEARCH_URL" | summ)
else
  echo "bench: cannot set the hub to SCHED_IDLE (chrt): those rows are skipped" >&2
  DI="— — — 0"; DIP="— — — 0"; SI="— — — 0"; IDRAIN="—"
fi
# The unit alone: the hub stopped, so the unit answers with its link down (as it does out of
# coverage; the audit events wait in its journal) and the two cores serve only the unit and
# wrk. On this machine the hub otherwise shares the cores, storing every lookup's audit event.
echo "bench: the unit alone (hub stopped, link down)..." >&2
kill "$HUB" 2>/dev/null || true
wait "$HUB" 2>/dev/null || true
sleep 2
DA=$("${WRK[@]}" -c64 -d"$WRK_SECS"s --latency -s "$T/tokens.lua" "https://$LAN" | summ)
DAP=$("${WRK[@]}" -c64 -d"$WRK_SECS"s --latency -s "$T/tokens-paced.lua" "https://$LAN" | summ)
BYTES=$(wc -c < "$T/www/p.json")
read -r dr d50 d99 dbad <<<"$D"; read -r gr g50 g99 _ <<<"$G"
read -r dpr dp50 dp99 dpbad <<<"$DP"; read -r gpr gp50 gp99 _ <<<"$GP"; read -r _ s50 s99 sbad <<<"$S"
read -r ssr ss50 ss99 ssbad <<<"$SS"; read -r dar da50 da99 dabad <<<"$DA"; read -r dapr dap50 dap99 dapbad <<<"$DAP"
read -r dir di50 di99 dibad <<<"$DI"; read -r dipr dip50 dip99 dipbad <<<"$DIP"; read -r _ si50 si99 sibad <<<"$SI"
div() { python3 -c "print(f'{float(\"$1\")/float(\"$2\"):.2f}')"; }
ratio=$(div "$dr" "$gr"); aratio=$(div "$dar" "$gr")
iratio=$([ "$IDLE" = 1 ] && div "$dir" "$gr" || echo "—")
if [ "$POUCH" = 1 ]; then
  read -r pr p50 p99 _ <<<"$P"; read -r ppr pp50 pp99 _ <<<"$PP"
  PBYTES=$(wc -c < "$T/pouch.json")
  PRSS=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$PID_POUCH/status" 2>/dev/null || echo "?")
  pratio=$(div "$dr" "$pr")
  pnratio=$(div "$pr" "$gr")
  PHEAD="pouchdb-server GET /db/doc (in memory, $PBYTES-byte document)"
  PCL="$pr req/s (p50 $p50, p99 $p99)"; PPACED="$ppr req/s, $pp50, $pp99"; PRSSC="$PRSS MiB"
else
  PHEAD="pouchdb-server GET /db/doc"; PCL="skipped (no npm)"; PPACED="skipped"; PRSSC="skipped"
  pratio="—"; pnratio="—"
fi
echo
echo "LAN API benchmark: $N cached summaries, HTTPS, $(wc -l < "$T/tokens.txt") tokens × $PER_TOKEN patients each, nginx answering every path with one summary of $BYTES bytes, loopback, wrk 64 connections$([ "$SPLIT" = 1 ] && echo "; SPLIT: servers on CPU 0 (nginx one worker), wrk one thread on CPU 1")"
echo
echo "| measure | edge-daemon (HTTPS) | nginx (HTTPS, same certificate, same JSON as a static file) | $PHEAD |"
echo "| --- | --- | --- | --- |"
echo "| closed-loop throughput | $dr req/s (p50 $d50, p99 $d99) | $gr req/s (p50 $g50, p99 $g99) | $PCL |"
echo "| daemon ÷ nginx | $ratio × | | |"
echo "| daemon ÷ pouchdb | $pratio × | | |"
echo "| pouchdb ÷ nginx | | | $pnratio × |"
echo "| the closed loop's audit events uploaded to the hub before the paced run | ${DRAIN} s | | |"
echo "| paced ≈ 1,000 req/s: achieved, p50, p99 | $dpr req/s, $dp50, $dp99 | $gpr req/s, $gp50, $gp99 | $PPACED |"
echo "| search (family + postcode district; $MATCHED matched) paced ≈ 500 req/s: p50, p99 | $s50, $s99 | — | — |"
echo "| the same search paced ≈ 50 req/s ($ssr req/s achieved): p50, p99 | $ss50, $ss99 | — | — |"
echo "| the hub at idle priority (SCHED_IDLE): closed loop | $dir req/s (p50 $di50, p99 $di99); $iratio × nginx | | |"
echo "| the hub at idle priority: paced ≈ 1,000 req/s (its backlog took ${IDRAIN} s to upload first): achieved, p50, p99 | $dipr req/s, $dip50, $dip99 | | |"
echo "| the hub at idle priority: the search paced ≈ 500 req/s: p50, p99 | $si50, $si99 | | |"
echo "| the unit alone (hub stopped, link down): closed loop | $dar req/s (p50 $da50, p99 $da99); $aratio × nginx | | |"
echo "| the unit alone: paced ≈ 1,000 req/s: achieved, p50, p99 | $dapr req/s, $dap50, $dap99 | | |"
echo "| daemon answers that were not 2xx (closed loop / paced / search / slow search / idle hub: closed, paced, search / alone / alone paced) | $dbad / $dpbad / $sbad / $ssbad / $dibad, $dipbad, $sibad / $dabad / $dapbad | | |"
echo "| peak RSS under this load | $RSS MiB (cold sync before it: $SYNC_RSS MiB) | | $PRSSC |"
