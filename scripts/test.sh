#!/usr/bin/env bash
# Installs what the tests need (idempotently) and runs the whole test suite.
# Real peers: Orthanc (PACS) with its DICOMweb plugin, dcmtk (DICOM tools), iperf3, curl, iproute2 (the link emulator's
# namespaces), rsyslog (SIEM export, ATNA forwarding), jing (RELAX NG validation of the ATNA messages),
# Chromium with chromedriver (device trust in a real browser), PostgreSQL (the replicas' store)
# — from Debian's packages —
# and an OpenID provider (tests/oidc-provider: panva's oidc-provider from npm, run by node).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
# DICOMweb (QIDO/WADO-RS) for the web-viewer tests (tests/tests/web.rs).
dpkg -s orthanc-dicomweb >/dev/null 2>&1 || need+=(orthanc-dicomweb)
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v curl >/dev/null 2>&1 || need+=(curl)
# `ip netns` / `ip link` / `ip addr` for the link emulator (postern-bench wan, tests/tests/wan.rs).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v rsyslogd >/dev/null 2>&1 || need+=(rsyslog)
dpkg -s rsyslog-openssl >/dev/null 2>&1 || need+=(rsyslog-openssl)
command -v jing >/dev/null 2>&1 || need+=(jing)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
# A real browser for the device-trust tests (WebDriver virtual authenticator), and certutil to
# trust the gateway's test CA in the browser's NSS database.
dpkg -s chromium >/dev/null 2>&1 || need+=(chromium)
dpkg -s chromium-driver >/dev/null 2>&1 || need+=(chromium-driver)
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
# PostgreSQL server binaries for the replica tests (each test run starts its own throwaway
# cluster on a free loopback port; the system cluster is not used).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# Packaging and unit checks: systemd-analyze (systemd), debootstrap (a Debian root to install
# the .debs into), lintian, and dpkg-deb.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
# RDP end to end (tests/tests/rdp.rs, docs/rdp.md): xrdp with xorgxrdp as the reporting PC,
# FreeRDP's X11 client under Xvfb as the clinician's, xwd (x11-apps, with xlogo for the
# session's desktop) for screenshots, xrandr (x11-xserver-utils) for two monitors on one Xvfb.
[ -x /usr/sbin/xrdp ] || need+=(xrdp)
dpkg -s xorgxrdp >/dev/null 2>&1 || need+=(xorgxrdp)
command -v xfreerdp >/dev/null 2>&1 || need+=(freerdp2-x11)
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb)
command -v xwd >/dev/null 2>&1 || need+=(x11-apps)
command -v xrandr >/dev/null 2>&1 || need+=(x11-xserver-utils)
# The Windows client (tests/tests/windows.rs): the mingw-w64 linker for x86_64-pc-windows-gnu,
# and Wine (64-bit, headless) to run postern.exe against the Linux gateway.
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || need+=(gcc-mingw-w64-x86-64)
command -v wine >/dev/null 2>&1 || need+=(wine)
dpkg -s wine64 >/dev/null 2>&1 || need+=(wine64)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Windows client's Rust target (rust-std for x86_64-pc-windows-gnu), once.
if ! rustup target list --installed | grep -x x86_64-pc-windows-gnu >/dev/null; then
  echo "installing: rust target x86_64-pc-windows-gnu (rustup target add)"
  rustup target add x86_64-pc-windows-gnu
fi

# The OpenID provider's npm dependencies, pinned by its package-lock.json (needs Node >= 20.12).
oidc=tests/oidc-provider
if [ ! -f "$oidc/node_modules/.package-lock.json" ] ||
  [ "$oidc/package-lock.json" -nt "$oidc/node_modules/.package-lock.json" ]; then
  echo "installing: $oidc/node_modules (npm ci)"
  (cd "$oidc" && npm ci --no-audit --no-fund)
fi

timings=()
timed() { # NAME COMMAND...: runs it and records how long it took
  local name=$1 t0=$SECONDS
  shift
  echo "=== $name"
  "$@"
  timings+=("$name: $((SECONDS - t0)) s")
}

# The end-to-end tests start the real binaries, so build them first.
timed "build" cargo build --workspace --bins --locked
# The Windows client, run under Wine by tests/tests/windows.rs.
timed "windows build" cargo build -p postern-client --bin postern --target x86_64-pc-windows-gnu --locked
timed "tests" cargo test --workspace --locked

# API docs build without a warning.
timed "docs" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# Supply chain: licences, bans (no OpenSSL), sources; advisories when the database is reachable.
deny_checks() {
  if ! command -v cargo-deny >/dev/null 2>&1; then
    echo "installing: cargo-deny (cargo install --locked)"
    cargo install cargo-deny --locked
  fi
  cargo deny --locked --log-level error check --show-stats bans licenses sources
  # The RustSec database is cloned from GitHub. If that fails (no route to GitHub) the check is
  # reported as skipped with the reason — run against a stale copy when one is cached — rather
  # than passed. See docs/operations.md, "CI checks".
  local out
  if out=$(timeout 300 cargo deny --locked --log-level error check advisories 2>&1); then
    echo "advisories ok"
  elif grep -q "failed to fetch advisory database" <<<"$out"; then
    local why
    why=$(echo "$out" | grep -m1 -E "fatal:|Could not resolve|error:" || true)
    if ls -d "$HOME"/.cargo/advisory-dbs/*/crates >/dev/null 2>&1; then
      echo "advisories: database unreachable ($why); checking against the cached copy"
      cargo deny --locked --offline --log-level error check advisories
    else
      echo "advisories: SKIPPED — the RustSec database could not be fetched: $why"
    fi
  else
    echo "$out"
    return 1
  fi
}
timed "cargo deny" deny_checks

# The Debian packages: build, inspect, install into a throwaway Debian root.
if [ "$(id -u)" -eq 0 ]; then
  timed "packages" ./scripts/package-check.sh
else
  echo "packages: SKIPPED — scripts/package-check.sh needs root (chroot); CI runs as root"
fi

printf 'step times: %s\n' "${timings[@]}"
