#!/usr/bin/env bash
# Agent ingest at full rate with the example schemas on against off (issue #20), in one session:
# a fresh broker (archive off) and agent per run, alternating "off" (no schema registered) and
# "on" (the four schemas of schemas/fintech registered, and the agent running with them), then
#   runnel bench ingest --rate max --duration ${SECS:-10}s --scenario fintech --until-logged
# Prints each run's throughput and p99, the schema rejections the agent counted (0: every
# generated event is valid), and at the end the medians, the ratio and the cost per event
# (1/on - 1/off, in µs on this machine's two cores).
# Usage: benches/schemas_ab.sh RUNNEL_BINARY RUNNEL_AGENT_BINARY [RUNS]
set -euo pipefail
BIN=$1 AGENT=$2 RUNS=${3:-3} SECS=${SECS:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ALL=$(mktemp)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
one() { # KIND
  local kind=$1 d bpid apid token gen=0
  d=$(mktemp -d)
  "$BIN" broker --data-dir "$d/b" --quic-addr 127.0.0.1:18811 --admin-addr 127.0.0.1:18813 \
    --archive-enabled false > "$d/b.log" 2>&1 &
  bpid=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:18813/readyz >/dev/null && break; sleep 0.1; done
  token=$(cat "$d/b/admin-token")
  RUNNEL_TOKEN=$token "$BIN" agent enroll --name bench-agent --tenant default --out "$d/cert" \
    --admin-addr 127.0.0.1:18813 >/dev/null
  if [ "$kind" = on ]; then
    for f in "$ROOT"/schemas/fintech/*.json; do
      RUNNEL_TOKEN=$token "$BIN" schema register "$(basename "$f" .json)" "$f" \
        --admin-addr 127.0.0.1:18813 >/dev/null
    done
    gen=4
  fi
  "$AGENT" --data-dir "$d/a" --http-addr 127.0.0.1:18810 --broker-addr 127.0.0.1:18811 \
    --broker-ca "$d/b/tls/ca.pem" --tls-cert "$d/cert/agent.pem" --tls-key "$d/cert/agent.key" \
    > "$d/a.log" 2>&1 &
  apid=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:18810/readyz >/dev/null && break; sleep 0.1; done
  if [ "$gen" -gt 0 ]; then
    for _ in $(seq 100); do
      curl -s 127.0.0.1:18810/metrics | grep -q "^runnel_agent_schema_generation $gen" && break
      sleep 0.1
    done
  fi
  RUNNEL_TOKEN=$token "$BIN" bench ingest --url http://127.0.0.1:18810/v1/events --rate max \
    --duration "$SECS"s --scenario fintech --until-logged --admin-addr 127.0.0.1:18813 \
    --json "$d/r.json" --quiet >/dev/null
  local rejected
  rejected=$(curl -s 127.0.0.1:18810/metrics | awk '/^runnel_agent_schema_rejected_total/ {s += $2} END {print s + 0}')
  python3 -c "import json; j=json.load(open('$d/r.json')); print('$kind', round(j['throughput']['events_per_sec']), 'events/s p99', j['latency']['p99_ms'], 'ms errors', j['errors'], 'schema_rejections', $rejected)" | tee -a "$ALL"
  kill "$apid" "$bpid"; wait "$apid" "$bpid" 2>/dev/null || true
  rm -rf "$d"
}
for _ in $(seq "$RUNS"); do one off; one on; done
python3 - "$ALL" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    runs.setdefault(f[0], []).append((float(f[1]), float(f[4])))
med = {k: (statistics.median(t for t, _ in v), statistics.median(p for _, p in v)) for k, v in runs.items()}
for k, (t, p) in med.items():
    print(f"median {k}: {t:.0f} events/s, p99 {p} ms ({len(runs[k])} runs)")
off, on = med['off'][0], med['on'][0]
print(f"on / off: throughput {on / off:.3f}; cost per event {1e6 / on - 1e6 / off:.2f} µs of wall time at full rate")
PY
rm -f "$ALL"
