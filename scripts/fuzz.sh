#!/usr/bin/env bash
# Runs each fuzz target of the untrusted-input parsers for SECONDS (default 60) on nightly.
# Installs cargo-fuzz when missing. Crashes are saved in sdk/event/fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../sdk/event/fuzz"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in parse_body decode_frame; do
  cargo +nightly fuzz run -O "$target" -- -max_total_time="$secs" -rss_limit_mb=2048
done
