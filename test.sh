#!/usr/bin/env bash
# The test suite: formatting, lints, then every test, including the end-to-end tests that start
# the real binaries and kill them with SIGKILL.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runnel-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
scripts/setup.sh --test
started=$(date +%s)
cargo fmt --all -- --check
cargo fmt --all --manifest-path plugins/Cargo.toml -- --check
# Clippy lints while the builds below compile: clippy-driver compiles the workspaces' own
# crates (lints and code in one pass, `-D warnings`), as `cargo clippy` does for its checks.
# The dependencies are then compiled once, instead of checked for clippy and compiled again.
export RUSTC_WORKSPACE_WRAPPER="${RUSTC_WORKSPACE_WRAPPER:-$(rustup which clippy-driver)}"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings"
# The end-to-end tests run the binaries from the target dir: build them first.
cargo build --workspace --bins --locked
# Every target (tests, benches, examples) is built and so linted.
cargo test --workspace --all-targets --no-run --locked
# The host tests load the example and test plugins: build them (wasm32-wasip2 components).
cargo build --release --locked --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
cargo test --workspace --locked
# The example plugins' own unit tests (native target).
cargo test --locked --manifest-path plugins/Cargo.toml -p pii-redact -p geo-enrich -p sampler
# The aggregator and enricher SDKs' own tests (dependencies of the plugins, not members: one -p
# at a time).
cargo test --locked --manifest-path plugins/Cargo.toml -p runnel-aggregator
cargo test --locked --manifest-path plugins/Cargo.toml -p runnel-plugin
# The Python SDK's own tests, with the venv's Python (the one componentize-py builds with).
(cd sdk/python && "$HOME/.cache/runnel-py/bin/python" -m unittest -q)
# The fuzz targets (run by scripts/fuzz.sh on nightly) must keep compiling.
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS cargo check --locked --manifest-path sdk/event/fuzz/Cargo.toml
echo "test.sh: all checks passed in $(( $(date +%s) - started ))s"
