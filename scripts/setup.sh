#!/usr/bin/env bash
# Installs what building and testing Runnel needs on a fresh machine. Idempotent: each step
# checks first and does nothing when its tool is already there.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    log "cargo not found: install Rust 1.95 with rustup first"; exit 1
  fi
fi

need_rust="1.95"
have_rust=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need_rust" "$have_rust" | sort -V | head -n1)" != "$need_rust" ]; then
  log "rustc $have_rust is older than $need_rust"; exit 1
fi

# rustfmt and clippy are part of the default rustup profile; add them if a minimal one was used.
for comp in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$comp"; then
    log "adding rustup component $comp"
    rustup component add "$comp"
  fi
done

# Plugins are WebAssembly components for wasm32-wasip2.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  log "adding rustup target wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

# Debian packages, installed when their command is missing.
apt_updated=""
apt_install() { # COMMAND PACKAGE WHY
  if command -v "$1" >/dev/null 2>&1; then return; fi
  log "installing $2 ($3)"
  local sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  if [ -z "$apt_updated" ]; then
    $sudo_cmd apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}

# Flight SQL's Substrait support (datafusion-substrait) compiles protobuf definitions at build
# time and needs protoc.
apt_install protoc protobuf-compiler "protoc, for the Flight SQL build"
# The tests render `runnel bench --report` pages in headless Chromium.
if [ "${1:-}" = "--test" ]; then
  apt_install chromium chromium "headless Chromium, for the bench report test"
fi

# Python tooling in one virtualenv: componentize-py builds the Python example plugin (and
# `runnel plugin build` for Python plugins looks here too). Pinned; reinstalled only when the
# pinned version is not the one there.
venv="$HOME/.cache/runnel-py"
componentize_py="componentize-py==0.25.1"
if [ ! -x "$venv/bin/python" ]; then
  log "creating the Python virtualenv $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "$componentize_py"; then
  log "installing $componentize_py into $venv"
  "$venv/bin/pip" install --quiet "$componentize_py"
fi
# The Arrow Flight clients the tests drive the broker with (pinned).
for pkg in "pyarrow==26.0.1" "adbc-driver-flightsql==1.13.0" "adbc-driver-manager==1.13.0"; do
  if ! "$venv/bin/pip" freeze 2>/dev/null | grep -qix "$pkg"; then
    log "installing $pkg into $venv"
    "$venv/bin/pip" install --quiet "$pkg"
  fi
done
