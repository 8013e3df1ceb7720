#!/usr/bin/env bash
# Cold sync beside a CouchDB-style peer, in the same run:
#   - Kerbside: the real hub → unit cold sync over QUIC (cargo bench --bench sync);
#   - pouchdb-server → pouchdb-server replication (the CouchDB replication protocol over HTTP,
#     both in memory) of the same summaries as JSON documents.
#
#   tests/benches/couch.sh [PATIENTS]     (default 20000; needs node/npm, installs pouchdb-server)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
command -v npm >/dev/null || { echo "need node and npm"; exit 1; }
(cd tests/benches/couch && { npm ci --no-audit --no-fund --ignore-scripts >/dev/null 2>&1 || npm install --no-audit --no-fund --ignore-scripts >/dev/null; })
cargo build --release --workspace --bins -q
BIN=$PWD/target/release
T=$(mktemp -d -t kerbside-couch.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$T"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
"$BIN/edge-hub" synth --patients "$N" --seed 7 --out "$T/synth.ndjson" >/dev/null 2>&1
"$BIN/kerbside-summaries" "$T/synth.ndjson" > "$T/docs.ndjson"
A=$(port); B=$(port)
ROOT=$PWD
PS=$ROOT/tests/benches/couch/node_modules/.bin/pouchdb-server
mkdir -p "$T/a" "$T/b"
(cd "$T/a" && exec "$PS" -m -p "$A" >/dev/null 2>&1) & PIDS+=($!)
(cd "$T/b" && exec "$PS" -m -p "$B" >/dev/null 2>&1) & PIDS+=($!)
for i in $(seq 1 100); do curl -s "http://127.0.0.1:$A/" >/dev/null && curl -s "http://127.0.0.1:$B/" >/dev/null && break; sleep 0.2; done
echo "bench: pouchdb-server replication of $N summaries..." >&2
COUCH=$(python3 - "$T/docs.ndjson" "$A" "$B" <<'PY'
import json, sys, time, urllib.request
docs, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
def req(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(r, timeout=3600) as resp:
        return json.loads(resp.read())
req("PUT", f"http://127.0.0.1:{a}/summaries")
batch, n, size = [], 0, 0
for line in open(docs):
    batch.append(json.loads(line)); n += 1; size += len(line)
    if len(batch) == 1000:
        req("POST", f"http://127.0.0.1:{a}/summaries/_bulk_docs", {"docs": batch}); batch = []
if batch:
    req("POST", f"http://127.0.0.1:{a}/summaries/_bulk_docs", {"docs": batch})
t = time.time()
req("POST", f"http://127.0.0.1:{b}/_replicate", {"source": f"http://127.0.0.1:{a}/summaries", "target": "summaries", "create_target": True})
secs = time.time() - t
info = req("GET", f"http://127.0.0.1:{b}/summaries")
assert info["doc_count"] == n, (info, n)
print(f"{n} {secs:.2f} {size/n:.0f}")
PY
)
read -r cn cs cb <<<"$COUCH"
echo "bench: Kerbside cold sync of the same $N summaries..." >&2
SYNC=$(cargo bench -q -p kerbside-tests --bench sync -- "$N" 2>/dev/null)
ks=$(echo "$SYNC" | awk -F'|' '/cold sync hub → unit/{gsub(/[ s]/,"",$3); print $3}')
kr=$(echo "$SYNC" | awk -F'|' '/summaries per second/{gsub(/ /,"",$3); print $3}')
kb=$(echo "$SYNC" | awk -F'|' '/bytes on the wire/{gsub(/[ B]/,"",$3); print $3}')
ratio=$(python3 -c "print(f'{float(\"$cs\")/float(\"$ks\"):.1f}')")
echo
echo "Cold sync of $N summaries, loopback, same run"
echo
echo "| | time | summaries/s | notes |"
echo "| --- | --- | --- | --- |"
echo "| Kerbside hub → unit (QUIC, mutual TLS, signed batches, sealed + fsync'd on the unit) | $ks s | $kr | $kb B/summary on the wire |"
echo "| pouchdb-server → pouchdb-server replication (CouchDB protocol, both in memory) | $cs s | $(python3 -c "print(round($cn/float(\"$cs\")))") | JSON documents of $cb B |"
echo "| Kerbside ÷ pouchdb time | $ratio × faster | | |"
