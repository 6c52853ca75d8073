#!/usr/bin/env bash
# Makes (once, then cached) a minimal Debian bookworm root with systemd, for the package checks
# (scripts/package-check.sh, chroot) and the boot smoke test (scripts/systemd-smoke.sh, nspawn).
# Prints its path. Uses the Debian mirror apt is configured with. Needs root and debootstrap.
#   POSTERN_DEBIAN_ROOT=DIR   where the cached root lives (default /var/tmp/postern-bookworm)
set -euo pipefail
base=${POSTERN_DEBIAN_ROOT:-/var/tmp/postern-bookworm}
if [ ! -f "$base/.complete" ]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "installing: debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "debootstrap: bookworm from $mirror into $base" >&2
  rm -rf "$base"
  mkdir -p "$(dirname "$base")"
  if ! debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,adduser,sudo,curl,ca-certificates,procps,iproute2,python3,man-db \
    bookworm "$base" "$mirror" > "$base.log" 2>&1; then
    tail -n 20 "$base.log" >&2
    exit 1
  fi
  touch "$base/.complete"
fi
echo "$base"
