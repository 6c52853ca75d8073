#!/usr/bin/env bash
# Builds the Debian packages into target/debian/:
#   postern-gateway   gateway + postern-policy + postern-audit, unit, example configs
#   postern-connector connector, unit, example config
#   postern           the clinician's CLI
# each with bash/zsh/fish completions and man pages generated from the programs' clap
# definitions (`PROGRAM generate-assets DIR`). Binaries are stripped (`cargo deb --strip`).
# DEB_REVISION=N sets the Debian revision (default 1), e.g. to build an upgrade for testing;
# DEB_OUT=DIR writes the packages there instead of target/debian.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "installing: cargo-deb (cargo install --locked)"
  cargo install cargo-deb --locked
fi

programs=(postern postern-gateway postern-connector postern-policy postern-audit)
cargo build --release --locked --bins \
  -p postern-client -p postern-gateway -p postern-connector -p postern-policy -p postern-audit

target="${CARGO_TARGET_DIR:-target}"
assets="$target/release/pkg-assets"
rm -rf "$assets"
for p in "${programs[@]}"; do
  "$target/release/$p" generate-assets "$assets/$p"
  gzip -9n "$assets/$p"/man/*.1
done

out="${DEB_OUT:-$target/debian}"
mkdir -p "$out"
rm -f "$out"/*.deb
for crate in postern-gateway postern-connector postern-client; do
  cargo deb --no-build --strip -p "$crate" --deb-revision "${DEB_REVISION:-1}" --output "$out/"
done
ls -l "$out"/*.deb
