#!/usr/bin/env bash
# Broker ingest over QUIC, before (A) and after (B), alternating in one session:
#   runnel bench broker --agents 8 --rate max --duration ${SECS:-20}s
# against a broker with the archive off, on a fresh data dir each run.
set -euo pipefail
A=$1 B=$2 RUNS=${3:-3}
one() { # BIN KIND
  local bin=$1 kind=$2 d
  d=$(mktemp -d)
  "$bin" broker --data-dir "$d/b" --quic-addr 127.0.0.1:18711 --admin-addr 127.0.0.1:18713 \
    --archive-enabled false > "$d/b.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:18713/readyz >/dev/null && break; sleep 0.1; done
  local extra=()
  # A broker with client certificates: the bench enrolls its simulated agents with the admin token.
  if [ -f "$d/b/admin-token" ]; then extra=(--admin-addr 127.0.0.1:18713 --token "$(cat "$d/b/admin-token")"); fi
  "$bin" bench broker --agents 8 --rate max --duration ${SECS:-20}s --broker-addr 127.0.0.1:18711 \
    --broker-ca "$d/b/tls/ca.pem" "${extra[@]}" --json "$d/r.json" --quiet >/dev/null
  python3 -c "import json,sys; j=json.load(open('$d/r.json')); print('$kind', round(j['throughput']['events_per_sec']), 'p50', j['latency']['p50_ms'], 'p99', j['latency']['p99_ms'])"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$d"
}
for i in $(seq "$RUNS"); do one "$A" before; one "$B" after; done
