#!/usr/bin/env bash
# Builds the .debs (scripts/package.sh) and proves them without booting anything:
#  1. metadata and contents (dpkg-deb -I / -c): binaries, units, conffiles, completions, man pages;
#  2. lintian, errors fatal;
#  3. install into a throwaway Debian bookworm root (chroot, from scripts/debian-root.sh):
#     postinst made the system users, 0700 state directories and 0640 root:<service> configs;
#     the binaries run there; `systemd-analyze verify` and `security` on the installed units;
#     reinstall keeps an edited conffile; remove and purge keep the state directories.
# Run by scripts/test.sh (CI). Needs root (chroot) and network to the Debian mirror the first
# time (debootstrap; the root is cached in /var/tmp afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "package-check: FAILED: $*" >&2; exit 1; }
pass=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }

./scripts/package.sh
ver=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)-1
debs="${DEB_OUT:-${CARGO_TARGET_DIR:-target}/debian}"
gw=$debs/postern-gateway_${ver}_amd64.deb
conn=$debs/postern-connector_${ver}_amd64.deb
cli=$debs/postern_${ver}_amd64.deb
for d in "$gw" "$conn" "$cli"; do [ -f "$d" ] || fail "$d not built"; done

# --- 1. metadata and contents
field() { dpkg-deb -f "$1" "$2"; }
for d in "$gw" "$conn" "$cli"; do
  deps=$(field "$d" Depends)
  case "$deps" in *libc6*) ;; *) fail "$d: Depends lacks libc6: $deps" ;; esac
  echo "$(basename "$d"): $(du -k "$d" | cut -f1) KiB, Depends: $deps"
done
case "$(field "$gw" Depends)" in *adduser*procps*) ;; *) fail "gateway Depends lacks adduser/procps" ;; esac
case "$(field "$conn" Depends)" in *adduser*) ;; *) fail "connector Depends lacks adduser" ;; esac
ok "control fields"

contents() { dpkg-deb -c "$1" | awk '{print $1, $2, $6}'; }
# The listing is read whole before grep looks at it: `contents | grep -q` under pipefail fails
# at random when grep quits at the first match and awk is killed by SIGPIPE (CI at 1eb90a3).
has() { # deb mode owner path
  local list
  list=$(contents "$1")
  grep -qxF -e "$2 $3 ./$4" <<<"$list" || fail "$(basename "$1"): no $2 $3 $4; has:
$list"
}
for b in postern-gateway postern-policy postern-audit; do
  has "$gw" -rwxr-xr-x 0/0 "usr/bin/$b"
  has "$gw" -rw-r--r-- 0/0 "usr/share/man/man1/$b.1.gz"
  has "$gw" -rw-r--r-- 0/0 "usr/share/bash-completion/completions/$b"
  has "$gw" -rw-r--r-- 0/0 "usr/share/zsh/vendor-completions/_$b"
  has "$gw" -rw-r--r-- 0/0 "usr/share/fish/vendor_completions.d/$b.fish"
done
has "$gw" -rw-r--r-- 0/0 usr/share/man/man1/postern-gateway-token-create.1.gz
has "$gw" -rw-r--r-- 0/0 usr/lib/systemd/system/postern-gateway.service
has "$gw" -rw-r----- 0/0 etc/postern/gateway.toml
has "$gw" -rw-r----- 0/0 etc/postern/policy.toml
has "$gw" -rw-r--r-- 0/0 usr/share/doc/postern-gateway/operator-guide.md
has "$conn" -rwxr-xr-x 0/0 usr/bin/postern-connector
has "$conn" -rw-r--r-- 0/0 usr/lib/systemd/system/postern-connector.service
has "$conn" -rw-r----- 0/0 etc/postern/connector.toml
has "$conn" -rw-r--r-- 0/0 usr/share/man/man1/postern-connector-enroll.1.gz
has "$conn" -rw-r--r-- 0/0 usr/share/bash-completion/completions/postern-connector
has "$cli" -rwxr-xr-x 0/0 usr/bin/postern
has "$cli" -rw-r--r-- 0/0 usr/share/man/man1/postern-connect.1.gz
has "$cli" -rw-r--r-- 0/0 usr/share/bash-completion/completions/postern
ok "package contents (binaries, units, configs, man pages, completions)"
for d in "$gw" "$conn" "$cli"; do
  ! contents "$d" | grep postern-demo >/dev/null || fail "$(basename "$d") ships the demo"
done
# The production gateway must not link the development identity provider, which names itself in
# an x-postern-devidp response header on every reply.
x=$(mktemp -d)
dpkg-deb -x "$gw" "$x"
! grep -q x-postern-devidp "$x/usr/bin/postern-gateway" || fail "postern-gateway links the development identity provider"
rm -rf "$x"
ok "no demo and no development identity provider in the packages"

conffiles() { dpkg-deb --ctrl-tarfile "$1" | tar -xOf - ./conffiles; }
[ "$(conffiles "$gw")" = "$(printf '/etc/postern/gateway.toml\n/etc/postern/policy.toml')" ] ||
  fail "gateway conffiles: $(conffiles "$gw")"
[ "$(conffiles "$conn")" = "/etc/postern/connector.toml" ] || fail "connector conffiles"
ok "conffiles"

# --- 2. lintian (errors fail; the rest is printed)
if command -v lintian >/dev/null 2>&1; then
  lint=$(lintian --tag-display-limit 0 "$gw" "$conn" "$cli" 2>&1 || true)
  echo "$lint" | sed 's/^/lintian: /'
  if grep -q '^E: ' <<<"$lint"; then fail "lintian errors"; fi
  ok "lintian: no errors ($(echo "$lint" | grep -c '^W: ' || true) warnings)"
else
  echo "lintian not installed: skipped"
fi

# --- 3. install into a throwaway Debian root
base=$(./scripts/debian-root.sh)
root=$(mktemp -d /var/tmp/postern-pkgcheck.XXXXXX)
trap 'rm -rf "$root"' EXIT
cp -a "$base/." "$root/"
mkdir -p "$root/tmp/debs"
cp "$gw" "$conn" "$cli" "$root/tmp/debs/"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
in_root dpkg -i /tmp/debs/"$(basename "$gw")" /tmp/debs/"$(basename "$conn")" /tmp/debs/"$(basename "$cli")" >/dev/null

for u in postern-gateway postern-connector; do
  entry=$(in_root getent passwd "$u") || fail "postinst made no user $u"
  uid=$(echo "$entry" | cut -d: -f3)
  [ "$uid" -lt 1000 ] || fail "$u is not a system user: $entry"
  [ "$(echo "$entry" | cut -d: -f7)" = /usr/sbin/nologin ] || fail "$u has a login shell: $entry"
  [ "$(stat -c '%a %u' "$root/var/lib/$u")" = "700 $uid" ] || fail "/var/lib/$u: $(stat -c '%a %U' "$root/var/lib/$u")"
done
ok "postinst: system users and 0700 state directories"
gid() { in_root getent group "$1" | cut -d: -f3; }
for f in gateway.toml:postern-gateway policy.toml:postern-gateway connector.toml:postern-connector; do
  [ "$(stat -c '%a %u %g' "$root/etc/postern/${f%%:*}")" = "640 0 $(gid "${f##*:}")" ] ||
    fail "/etc/postern/${f%%:*}: $(stat -c '%a %u %g' "$root/etc/postern/${f%%:*}")"
done
ok "postinst: configs 0640 root:<service group>"

for b in postern-gateway postern-connector postern postern-policy postern-audit; do
  out=$(in_root "/usr/bin/$b" --version) || fail "$b --version in the Debian root"
  case "$out" in "$b "*) ;; *) fail "$b --version: $out" ;; esac
done
in_root postern-policy check /etc/postern/policy.toml >/dev/null || fail "shipped policy does not check"
ok "binaries run in a bare bookworm; shipped policy checks"

verify=$(systemd-analyze verify --man=no --root="$root" postern-gateway.service postern-connector.service 2>&1) ||
  fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify complained: $verify"
for u in postern-gateway postern-connector; do
  score=$(systemd-analyze security --offline=true --root="$root" "$u.service" 2>&1 |
    sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
  [ -n "$score" ] || fail "no exposure score for $u"
  awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "$u exposure $score > 2.0"
  echo "$u.service: exposure $score"
done
ok "installed units: verify clean, exposure <= 2.0"

# Reinstall (what an upgrade does): an edited conffile stays, modes are put right again.
echo "# edited by the operator" >> "$root/etc/postern/gateway.toml"
chmod 0644 "$root/etc/postern/gateway.toml"
in_root dpkg -i --force-confold /tmp/debs/"$(basename "$gw")" >/dev/null
grep -q "edited by the operator" "$root/etc/postern/gateway.toml" || fail "reinstall lost the edited conffile"
[ "$(stat -c %a "$root/etc/postern/gateway.toml")" = 640 ] || fail "reinstall left gateway.toml $(stat -c %a "$root/etc/postern/gateway.toml")"
ok "reinstall keeps the edited conffile, mode 0640 again"

touch "$root/var/lib/postern-gateway/connector-ca.key"
in_root dpkg --purge postern-gateway postern-connector postern >/dev/null
[ ! -e "$root/usr/bin/postern-gateway" ] || fail "purge left the binary"
[ ! -e "$root/etc/postern/gateway.toml" ] || fail "purge left the conffile"
[ -e "$root/var/lib/postern-gateway/connector-ca.key" ] || fail "purge deleted the gateway state"
ok "purge removes files and conffiles, keeps the state directories"

echo "package-check: $pass passed, 0 failed"
