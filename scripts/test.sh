#!/usr/bin/env bash
# Installs what the tests need (idempotently) and runs the whole test suite.
# Real peers: Orthanc (PACS), dcmtk (DICOM tools), iperf3, curl, rsyslog (SIEM export),
# Chromium with chromedriver (device trust in a real browser) — from Debian's packages —
# and an OpenID provider (tests/oidc-provider: panva's oidc-provider from npm, run by node).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v rsyslogd >/dev/null 2>&1 || need+=(rsyslog)
dpkg -s rsyslog-openssl >/dev/null 2>&1 || need+=(rsyslog-openssl)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
# A real browser for the device-trust tests (WebDriver virtual authenticator), and certutil to
# trust the gateway's test CA in the browser's NSS database.
dpkg -s chromium >/dev/null 2>&1 || need+=(chromium)
dpkg -s chromium-driver >/dev/null 2>&1 || need+=(chromium-driver)
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The OpenID provider's npm dependencies, pinned by its package-lock.json (needs Node >= 20.12).
oidc=tests/oidc-provider
if [ ! -f "$oidc/node_modules/.package-lock.json" ] ||
  [ "$oidc/package-lock.json" -nt "$oidc/node_modules/.package-lock.json" ]; then
  echo "installing: $oidc/node_modules (npm ci)"
  (cd "$oidc" && npm ci --no-audit --no-fund)
fi

# The end-to-end tests start the real binaries, so build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
