#!/usr/bin/env bash
# The operator guide, done for real on a fresh Debian machine: builds the .debs, makes a Debian
# bookworm root with debootstrap (cached), boots it with systemd as PID 1 (systemd-nspawn -b,
# private network: loopback only), and runs scripts/smoke/guide-steps.sh inside it: install the
# gateway, start it under systemd, create an enrolment token, install and enrol the connector,
# connect as a clinician and fetch a page through the tunnel, reload, upgrade to a new package
# revision (state kept), back up and restore the state. Stops by itself (bounded by timeouts)
# and shuts the container down. Needs root. Not part of CI (about 5 minutes warm, plus the
# release build and, the first time, the debootstrap).
#
#   scripts/systemd-smoke.sh            # exit 0 = every step passed
#   POSTERN_SMOKE_DIR=/var/tmp/x        # where the container's root and the logs go
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

[ "$(id -u)" -eq 0 ] || { echo "systemd-smoke: needs root (debootstrap, systemd-nspawn)" >&2; exit 1; }

work=${POSTERN_SMOKE_DIR:-/var/tmp/postern-smoke}
machine=$work/machine
mkdir -p "$work"

need=()
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The packages: the release and an upgrade (same code, next Debian revision).
ver=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# (The upgrade first: cargo-deb tidies target/debian/ as it works.)
DEB_REVISION=2 DEB_OUT=target/debian-upgrade ./scripts/package.sh
./scripts/package.sh

# A minimal Debian bookworm with systemd (cached).
base=$(./scripts/debian-root.sh)

rm -rf "$machine"
cp -a "$base" "$machine"
mkdir -p "$machine/root/debs"
cp target/debian/*.deb target/debian-upgrade/*.deb "$machine/root/debs/"
cp scripts/smoke/guide-steps.sh "$machine/root/"
echo "postern-smoke" > "$machine/etc/hostname"
printf '127.0.1.1 postern-smoke\n127.0.0.1 gw.example.org\n' >> "$machine/etc/hosts"

# systemd-nspawn keeps per-machine state under /run/systemd/nspawn and refuses to delete it
# unless it is on tmpfs; on a host whose /run is not tmpfs (PID 1 is not systemd) give it one.
mounted=""
if [ "$(stat -f -c %T /run/systemd/nspawn 2>/dev/null || stat -f -c %T /run)" != tmpfs ]; then
  mkdir -p /run/systemd/nspawn
  mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
  mounted=/run/systemd/nspawn
fi

nspawn_pid=""
cleanup() {
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true   # nspawn halts the container
    for _ in $(seq 1 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  [ -z "$mounted" ] || umount "$mounted" || true
}
trap cleanup EXIT

echo "booting the container (systemd-nspawn -b, private network)"
timeout 1200 systemd-nspawn -q -D "$machine" -M postern-smoke -b --register=no --keep-unit \
  --private-network --console=pipe > "$work/console.log" 2>&1 &
nspawn_pid=$!

# The container's PID 1 (systemd) is the child of systemd-nspawn, itself the child of timeout.
leader=""
for _ in $(seq 1 100); do
  nspawn=$(pgrep -P "$nspawn_pid" -x systemd-nspawn | head -n 1 || true)
  [ -n "$nspawn" ] && leader=$(pgrep -P "$nspawn" | head -n 1 || true)
  [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ] && break
  leader=""
  sleep 0.1
done
[ -n "$leader" ] || { echo "container did not start"; cat "$work/console.log"; exit 1; }
inside() {
  nsenter -t "$leader" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive "$@"
}
state=""
for _ in $(seq 1 120); do
  state=$(inside systemctl is-system-running 2>/dev/null || true)
  case "$state" in running | degraded) break ;; esac
  sleep 0.5
done
echo "container: systemd is $state ($(inside systemd-analyze 2>/dev/null | head -n 1))"
case "$state" in running | degraded) ;; *) echo "boot did not finish"; exit 1 ;; esac

start=$(date +%s)
set +e
timeout 900 nsenter -t "$leader" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
  /bin/sh /root/guide-steps.sh "$ver-1" "$ver-2" 2>&1 | tee "$work/steps.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  echo "--- journal (gateway, connector)"
  inside journalctl -u postern-gateway -u postern-connector --no-pager | tail -n 60 || true
  echo "systemd-smoke: FAILED (rc $rc); log $work/steps.log, root $machine"
  exit "$rc"
fi
echo "systemd-smoke: PASSED in $(($(date +%s) - start)) s (log $work/steps.log)"
cleanup
trap - EXIT
rm -rf "$machine"
