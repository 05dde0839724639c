#!/usr/bin/env bash
# Proves the README's first command on a new machine: builds a minimal Debian root with
# debootstrap (what a new machine of this kind comes with: git, Python 3.11 with pip and venv, and
# the Rust toolchain copied in with only its host target), clones the committed HEAD into it, and
# runs `./dev.sh` there: the set-up, the release build and `runnel dev`, until an event posted to
# the agent gets its `202`. Prints the wall time from the clone to that first 202. A step that
# `scripts/setup.sh` misses fails here instead of on a user's machine.
#
#   scripts/fresh-check.sh                  the set-up, the build, runnel dev, the first 202
#   scripts/fresh-check.sh --test           then `./test.sh` in the same root too
#   scripts/fresh-check.sh --without PKG    the same with PKG taken out of setup.sh's Debian
#                                           list: shows that the check catches a missing step
#   scripts/fresh-check.sh --keep           keep the root afterwards (printed) to look inside
#   scripts/fresh-check.sh --prepare        only make the Debian base (network, no build)
#
# Needs root (debootstrap, chroot, mounts in a private namespace). The Debian base is made once
# and kept as a tarball in ${RUNNEL_FRESH_DIR:-~/.cache/runnel-fresh}; each run unpacks a pristine
# copy, with empty cargo, pip and target caches. Long (a cold release build on this machine):
# not part of `.ci/run`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

log() { printf 'fresh-check: %s\n' "$*" >&2; }
die() { printf 'fresh-check: error: %s\n' "$*" >&2; exit 1; }

run_tests="" without="" keep="" prepare=""
while [ $# -gt 0 ]; do
  case "$1" in
    --test) run_tests=1 ;;
    --without) shift; without="${1:?--without needs a package name}" ;;
    --keep) keep=1 ;;
    --prepare) prepare=1 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mount)"
suite="bookworm"
mirror="http://deb.debian.org/debian"
cache="${RUNNEL_FRESH_DIR:-$HOME/.cache/runnel-fresh}"
base="$cache/base-$suite.tar"
mkdir -p "$cache"

# The host tool for this check (not something the build needs, so not in setup.sh's list).
if [ "$(dpkg-query -W -f='${Status}' debootstrap 2>/dev/null)" != "install ok installed" ]; then
  log "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# --- The Debian base, made once -------------------------------------------------------------------
# Python 3.11 with pip and venv and git are what a new machine has besides the Rust toolchain and
# gcc; gcc is left out on purpose: setup.sh must install what the build needs from its list.
if [ ! -f "$base" ]; then
  staging="$cache/staging"
  rm -rf "$staging"
  log "debootstrap $suite into $staging (once)"
  debootstrap --variant=minbase --include=git,python3,python3-pip,python3-venv \
    "$suite" "$staging" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    die "debootstrap failed: see $cache/debootstrap.log"
  cat >"$staging/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
  rm -rf "$staging"/var/cache/apt/archives/*.deb "$staging"/var/lib/apt/lists/*
  tar -C "$staging" -cf "$base.tmp" .
  mv "$base.tmp" "$base"
  rm -rf "$staging"
fi

[ -z "$prepare" ] || { log "the base is ready: $base"; exit 0; }

root=$(mktemp -d "$cache/root.XXXXXX")
cleanup() {
  if [ -n "$keep" ]; then log "kept the root at $root"; else rm -rf "$root"; fi
}
trap cleanup EXIT
tar -C "$root" -xf "$base"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/hosts "$root/etc/hosts"

# --- The Rust toolchain as a new machine has it: the host target only -----------------------------
toolchain=$(rustup show active-toolchain | awk '{print $1}')
toolchain_dir=$(rustc --print sysroot)
mkdir -p "$root/root/.rustup/toolchains" "$root/root/.cargo/bin"
cp -a "$toolchain_dir" "$root/root/.rustup/toolchains/"
cp -a "$HOME/.rustup/settings.toml" "$root/root/.rustup/"
for link in "$HOME"/.rustup/toolchains/*; do
  # Version aliases of the active toolchain (e.g. 1.95.0 -> stable).
  if [ -L "$link" ] && [ "$(readlink -f "$link")" = "$(readlink -f "$toolchain_dir")" ]; then
    ln -s "/root/.rustup/toolchains/$(basename "$toolchain_dir")" "$root/root/.rustup/toolchains/$(basename "$link")"
  fi
done
cp -a "$HOME"/.cargo/bin/. "$root/root/.cargo/bin/"
root_rustup() { RUSTUP_HOME="$root/root/.rustup" rustup "$@" --toolchain "$(basename "$toolchain_dir")"; }
if root_rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  root_rustup target remove wasm32-wasip2 >/dev/null 2>&1
fi
log "root $root: toolchain $toolchain, targets $(root_rustup target list --installed | tr '\n' ' ')"

# --- The machine's trust and environment ------------------------------------------------------------
# A machine of this kind reaches crates.io and PyPI through an egress proxy whose CA it trusts
# (in /usr/local/share/ca-certificates, the system bundle and the CA variables of its
# environment): the root gets the same, as a new machine has it. Nothing else of the host's.
mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
chroot_env=(env -i HOME=/root TERM=dumb LANG=C.UTF-8
  PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
for var in SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE REQUESTS_CA_BUNDLE PIP_CERT GIT_SSL_CAINFO \
  NODE_EXTRA_CA_CERTS PIP_DEFAULT_TIMEOUT PIP_DISABLE_PIP_VERSION_CHECK RUSTUP_AUTO_INSTALL; do
  [ -n "${!var:-}" ] && chroot_env+=("$var=${!var}")
done

# --- The source: a clone of the committed HEAD ------------------------------------------------------
if [ -n "$(git status --porcelain)" ]; then
  log "note: uncommitted changes are not part of the check (it clones HEAD $(git rev-parse --short HEAD))"
fi
clone_started=$(date +%s)
git clone -q "$repo" "$root/root/runnel"
if [ -n "$without" ]; then
  grep -q "^  \"$without " "$root/root/runnel/scripts/setup.sh" ||
    die "$without is not in setup.sh's Debian list"
  sed -i "/^  \"$without /d" "$root/root/runnel/scripts/setup.sh"
  log "took $without out of setup.sh's Debian list (in the root's clone only)"
fi

# --- Inside the root: ./dev.sh until the first 202, then (--test) ./test.sh ------------------------
cat >"$root/root/fresh-run.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
cd /root/runnel
free_port() { # KIND: a free loopback port (tcp or udp)
  python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1]=='tcp' else socket.SOCK_DGRAM); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])" "$1"
}
http=$(free_port tcp) admin=$(free_port tcp) flight=$(free_port tcp) quic=$(free_port udp)
mkdir -p /tmp/dev
printf 'quic_addr = "127.0.0.1:%s"\nadmin_addr = "127.0.0.1:%s"\nflight_addr = "127.0.0.1:%s"\n' \
  "$quic" "$admin" "$flight" >/tmp/dev/broker.toml
printf 'http_addr = "127.0.0.1:%s"\n' "$http" >/tmp/dev/agent.toml
./dev.sh --dir /tmp/dev/data --broker-config /tmp/dev/broker.toml \
  --agent-config /tmp/dev/agent.toml >/tmp/dev/dev.log 2>&1 &
dev=$!
# Post one event until the agent answers 202 (it is up once the build is done and dev started).
if python3 - "$http" "$dev" <<'PY'
import json, sys, time, urllib.request
port, dev = sys.argv[1], sys.argv[2]
body = json.dumps({"event_id": "fresh-1", "event_type": "page.view",
                   "timestamp": int(time.time() * 1000)}).encode()
def alive():
    try:
        with open(f"/proc/{dev}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
while alive():
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/events", data=body,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            if r.status == 202:
                print("fresh-check: 202", r.read().decode(), flush=True)
                sys.exit(0)
    except OSError:
        pass
    time.sleep(1)
sys.exit("fresh-check: ./dev.sh exited before the agent answered 202")
PY
then status=0; else status=$?; fi
[ "$status" -eq 0 ] && date +%s >/tmp/dev/first-202
kill "$dev" 2>/dev/null || true
wait "$dev" 2>/dev/null || true
[ "$status" -eq 0 ] || exit "$status"
if [ "${RUN_TESTS:-}" = 1 ]; then
  ./test.sh
fi
EOF
chmod +x "$root/root/fresh-run.sh"

log "running ./dev.sh in the root (the set-up, a cold release build, runnel dev); log: $root/tmp/dev/dev.log"
set +e
# A private mount and PID namespace: the mounts and every process started inside end with it.
unshare --mount --pid --fork --propagation private bash -c '
  set -e
  root=$1; shift
  mount --rbind /dev "$root/dev"
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  mount -t tmpfs tmpfs "$root/dev/shm"
  exec chroot "$root" "$@"
' fresh "$root" "${chroot_env[@]}" RUN_TESTS="$run_tests" /root/fresh-run.sh \
  2>&1 | tee "$cache/last-run.log"
status=${PIPESTATUS[0]}
set -e
if [ -f "$root/tmp/dev/first-202" ]; then
  log "clone to first 202: $(( $(cat "$root/tmp/dev/first-202") - clone_started ))s"
fi
if [ "$status" -ne 0 ]; then
  log "FAILED (exit $status) after $(( $(date +%s) - clone_started ))s; the end of ./dev.sh's output:"
  tail -n 30 "$root/tmp/dev/dev.log" >&2 || true
  exit "$status"
fi
log "passed$( [ -n "$run_tests" ] && echo ', ./test.sh too' ) in $(( $(date +%s) - clone_started ))s"
