#!/usr/bin/env bash
# One tenant over its ingest quota does not slow the others (issue #19), in one session:
#   calm: runnel bench broker --tenant calm --agents 4 --rate ${RATE:-200k} --duration ${SECS:-10}s
#   hog:  runnel bench broker --tenant hog  --agents 4 --rate max (throttled: it waits as told)
# against a fresh broker (archive off) with --tenant-quotas hog:ingest_events_per_sec=${QUOTA:-50000},
# alternating runs of calm alone ("unloaded"), calm beside hog offering exactly its quota
# ("at_quota": --rate QUOTA, never throttled) and calm beside hog at max ("over_quota": throttled
# to its quota); prints calm's throughput and latency for each, and what hog got through.
# At the end: the median of each kind's figures and calm's ratios to running alone.
# Usage: benches/tenant_quota.sh RUNNEL_BINARY [RUNS]
set -euo pipefail
BIN=$1 RUNS=${2:-3} SECS=${SECS:-10} RATE=${RATE:-200k} QUOTA=${QUOTA:-50000}
ALL=$(mktemp)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
bench() { # DIR TENANT RATE SECS JSON
  "$BIN" bench broker --tenant "$2" --agents 4 --rate "$3" --duration "$4"s \
    --broker-addr 127.0.0.1:18711 --broker-ca "$1/b/tls/ca.pem" --admin-addr 127.0.0.1:18713 \
    --token "$(cat "$1/b/admin-token")" --json "$5" --quiet >/dev/null
}
figures() { # KIND JSON
  python3 -c "import json; j=json.load(open('$2')); print('$1', round(j['throughput']['events_per_sec']), 'events/s p50', j['latency']['p50_ms'], 'p99', j['latency']['p99_ms'], 'ms errors', j['errors'])" | tee -a "$ALL"
}
one() { # KIND
  local kind=$1 d pid hog=
  d=$(mktemp -d)
  "$BIN" broker --data-dir "$d/b" --quic-addr 127.0.0.1:18711 --admin-addr 127.0.0.1:18713 \
    --archive-enabled false --tenant-quotas "hog:ingest_events_per_sec=$QUOTA" > "$d/b.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:18713/readyz >/dev/null && break; sleep 0.1; done
  if [ "$kind" != unloaded ]; then
    local hog_rate=max
    if [ "$kind" = at_quota ]; then hog_rate=$QUOTA; fi
    bench "$d" hog "$hog_rate" $((SECS + 3)) "$d/hog.json" &
    hog=$!
    sleep 1.5
  fi
  bench "$d" calm "$RATE" "$SECS" "$d/calm.json"
  figures "$kind" "$d/calm.json"
  if [ -n "$hog" ]; then wait "$hog"; figures "  hog" "$d/hog.json"; fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$d"
}
for _ in $(seq "$RUNS"); do one unloaded; one at_quota; one over_quota; done
python3 - "$ALL" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    kind = f[0] if line[0] != ' ' else 'hog_' + prev
    if line[0] != ' ':
        prev = f[0]
    runs.setdefault(kind, []).append((float(f[1]), float(f[6])))
med = {k: (statistics.median(t for t, _ in v), statistics.median(p for _, p in v)) for k, v in runs.items()}
for k, (t, p) in med.items():
    print(f"median {k}: {t:.0f} events/s, p99 {p} ms ({len(runs[k])} runs)")
base = med.get('unloaded')
for k in ('at_quota', 'over_quota'):
    if base and k in med:
        print(f"calm {k} / unloaded: throughput {med[k][0] / base[0]:.2f}, p99 {med[k][1] / base[1]:.2f}")
PY
rm -f "$ALL"
