#!/usr/bin/env bash
# The quickstart: sets up what is missing, builds, and runs `runnel dev` (broker + agent on one
# data dir, default ports). Extra arguments go to `runnel dev` (e.g. --dir /tmp/runnel).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runnel-target}"
scripts/setup.sh
cargo build --release --bin runnel --bin runnel-agent
# The example plugins runnel dev deploys (pii-redact at the edge; geo-enrich and the example
# aggregators in the broker).
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
exec "$CARGO_TARGET_DIR/release/runnel" dev --plugins-dir "$CARGO_TARGET_DIR/wasm32-wasip2/release" "$@"
