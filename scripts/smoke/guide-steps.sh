#!/bin/sh
# The operator guide's install, enrol, connect, upgrade and backup steps (docs/operator-guide.md),
# run as written, as root inside the booted Debian container that scripts/systemd-smoke.sh
# starts. Gateway, connector, clinician and the stand-in hospital web server share the one
# machine (gw.example.org resolves to 127.0.0.1 through /etc/hosts); everything else is as on
# separate hosts. Exits non-zero at the first step that fails or whose result is wrong.
set -eu
VER="$1"        # Debian version of the packages, e.g. 0.1.0-1
UPGRADE="$2"    # Debian version of the upgrade packages, e.g. 0.1.0-2
cd /root/debs

step() { printf '\n=== %s\n' "$*"; }
check() { if ! eval "$1"; then echo "FAILED CHECK: $1" >&2; exit 1; fi; }
mode() { stat -c '%a %U:%G' "$1"; }

step "stand-in hospital web server on 127.0.0.1:8080 (the PACS viewer)"
mkdir -p /srv/pacs-web && echo "hello from the Truro PACS viewer" > /srv/pacs-web/index.html
cat > /etc/systemd/system/pacs-web.service <<'UNIT'
[Service]
ExecStart=/usr/bin/python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/pacs-web
DynamicUser=yes
UNIT
systemctl start pacs-web.service

step "1. install the gateway package"
apt-get install -y "./postern-gateway_${VER}_amd64.deb"
check '[ "$(mode /var/lib/postern-gateway)" = "700 postern-gateway:postern-gateway" ]'
check '[ "$(mode /etc/postern/gateway.toml)" = "640 root:postern-gateway" ]'
check '[ "$(mode /etc/postern/policy.toml)" = "640 root:postern-gateway" ]'
check 'dpkg-query -W -f="\${Conffiles}" postern-gateway | grep -q /etc/postern/gateway.toml'
check 'systemctl is-enabled postern-gateway.service | grep -qx disabled'
man -w postern-gateway-token-create >/dev/null
test -f /usr/share/bash-completion/completions/postern-gateway

step "2. configure: the policy names the endpoint; the example gateway.toml is used as shipped"
cat > /etc/postern/policy.toml <<'POLICY'
[defaults]
max_session = "8h"
idle_timeout = "30m"
zone = "Europe/London"

[[groups]]
name = "radiologists"
values = ["Radiology-Consultants"]

[[endpoints]]
name = "truro-pacs-web"
site = "truro"
host = "127.0.0.1"
port = 8080
protocol = "https"
egress = "display"

[[rules]]
id = "radiologists-viewer"
effect = "allow"
groups = ["radiologists"]
endpoints = ["truro-pacs-web"]
POLICY
postern-policy check /etc/postern/policy.toml
sudo -u postern-gateway postern-gateway check --config /etc/postern/gateway.toml

step "3. start the gateway under systemd"
systemctl enable --now postern-gateway
systemctl status --no-pager postern-gateway
curl --retry 10 --retry-connrefused --retry-delay 1 -fsS http://127.0.0.1:9090/readyz
check 'systemctl is-active postern-gateway.service | grep -qx active'
for f in server-ca.key connector-ca.key audit-key.pk8; do
    check '[ "$(mode /var/lib/postern-gateway/$f)" = "600 postern-gateway:postern-gateway" ]'
done
ls -la /var/lib/postern-gateway
check 'ss -ltn | grep -q ":8443 "'
check 'ss -ltn | grep -q ":8444 "'

step "4. the gateway CA for clients, and an enrolment token for the hospital"
sudo -u postern-gateway postern-gateway export-ca --config /etc/postern/gateway.toml --out /tmp/gateway-ca.pem
cp /tmp/gateway-ca.pem /root/gateway-ca.pem
TOKEN=$(sudo -u postern-gateway postern-gateway token create --config /etc/postern/gateway.toml --site truro --ttl 1h)
# admin commands ran as the service user: the files they wrote are the service's
check '[ "$(mode /var/lib/postern-gateway/state.db)" = "600 postern-gateway:postern-gateway" ]'
check '[ -z "$(find /var/lib/postern-gateway ! -user postern-gateway)" ]'

step "5. install and enrol the connector (hospital IT)"
apt-get install -y "./postern-connector_${VER}_amd64.deb"
check '[ "$(mode /var/lib/postern-connector)" = "700 postern-connector:postern-connector" ]'
check '[ "$(mode /etc/postern/connector.toml)" = "640 root:postern-connector" ]'
cat > /etc/postern/connector.toml <<'CONF'
state_dir = "/var/lib/postern-connector"
connections_per_gateway = 2

[[allow]]
cidr = "127.0.0.1/32"     # the Truro PACS viewer (stand-in)
ports = "8080"
CONF
sudo -u postern-connector postern-connector enroll --gateway https://gw.example.org:8443 --token "$TOKEN" --state-dir /var/lib/postern-connector
sudo -u postern-connector postern-connector check --config /etc/postern/connector.toml
systemctl enable --now postern-connector
sudo -u postern-connector postern-connector status --config /etc/postern/connector.toml
check 'systemctl is-active postern-connector.service | grep -qx active'
for f in /var/lib/postern-connector/*.key; do check '[ "$(mode "$f")" = "600 postern-connector:postern-connector" ]'; done
for i in $(seq 1 50); do
    sudo -u postern-gateway postern-gateway connector list --config /etc/postern/gateway.toml | grep -q truro && break
    sleep 0.2
done
sudo -u postern-gateway postern-gateway connector list --config /etc/postern/gateway.toml

step "6. a clinician connects (session token minted until sign-in is configured)"
apt-get install -y "./postern_${VER}_amd64.deb"
id alice >/dev/null 2>&1 || useradd --create-home alice
sudo -u postern-gateway postern-gateway session mint --config /etc/postern/gateway.toml --user alice@truro.nhs.uk --groups Radiology-Consultants --ttl 8h > /home/alice/session.token
cp /root/gateway-ca.pem /home/alice/gateway-ca.pem
chown alice: /home/alice/session.token /home/alice/gateway-ca.pem
chmod 600 /home/alice/session.token
connect_and_fetch() {
    sudo -u alice sh -c 'cd && exec postern connect truro-pacs-web --listen 127.0.0.1:18080 --gateway https://gw.example.org:8443 --ca-file gateway-ca.pem --token-file session.token' > /tmp/connect.log 2>&1 &
    pid=$!
    for i in $(seq 1 50); do grep -q '^ready: listening on' /tmp/connect.log && break; sleep 0.2; done
    cat /tmp/connect.log
    out=$(sudo -u alice curl -fsS http://127.0.0.1:18080/) || { kill "$pid"; return 1; }
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "through the tunnel: $out"
    [ "$out" = "hello from the Truro PACS viewer" ]
}
connect_and_fetch
postern-audit verify /var/lib/postern-gateway/audit
postern-audit sessions /var/lib/postern-gateway/audit --user alice@truro.nhs.uk
check 'postern-audit search /var/lib/postern-gateway/audit --type session.start --user alice@truro.nhs.uk | grep -q truro-pacs-web'

step "7. reload the policy (SIGHUP)"
pid_before=$(systemctl show -p MainPID --value postern-gateway)
sed -i 's/idle_timeout = "30m"/idle_timeout = "20m"/' /etc/postern/policy.toml
systemctl reload postern-gateway
for i in $(seq 1 50); do postern-audit search /var/lib/postern-gateway/audit --type policy.reloaded | grep -q reloaded && break; sleep 0.2; done
# (the gateway also notices the edit by itself; either way the same process goes on)
postern-audit search /var/lib/postern-gateway/audit --type policy.reloaded
check 'postern-audit search /var/lib/postern-gateway/audit --type policy.reloaded | grep -q reloaded'
check '[ "$(systemctl show -p MainPID --value postern-gateway)" = "$pid_before" ]'
check 'systemctl is-active postern-gateway.service | grep -qx active'

step "8. upgrade both packages: state kept, services restarted"
ca_before=$(sha256sum /var/lib/postern-gateway/server-ca.pem /var/lib/postern-gateway/connector-ca.key)
pid_before=$(systemctl show -p MainPID --value postern-gateway)
apt-get install -y "./postern-gateway_${UPGRADE}_amd64.deb" "./postern-connector_${UPGRADE}_amd64.deb" "./postern_${UPGRADE}_amd64.deb"
check '[ "$(dpkg-query -W -f="\${Version}" postern-gateway)" = "$UPGRADE" ]'
check '[ "$(systemctl show -p MainPID --value postern-gateway)" != "$pid_before" ]'
check 'systemctl is-active postern-gateway.service | grep -qx active'
check 'systemctl is-active postern-connector.service | grep -qx active'
check '[ "$(sha256sum /var/lib/postern-gateway/server-ca.pem /var/lib/postern-gateway/connector-ca.key)" = "$ca_before" ]'
check 'grep -q "idle_timeout = \"20m\"" /etc/postern/policy.toml'
check '[ "$(mode /etc/postern/gateway.toml)" = "640 root:postern-gateway" ]'
sleep 3   # the connector reconnects with backoff
connect_and_fetch

step "9. back up the gateway state, lose it, restore it"
systemctl stop postern-gateway
tar -C /var/lib -cpzf /root/postern-gateway-state.tar.gz postern-gateway
systemctl start postern-gateway
systemctl stop postern-gateway    # (the disaster: the state directory is lost)
mv /var/lib/postern-gateway /var/lib/postern-gateway.lost
tar -C /var/lib -xpzf /root/postern-gateway-state.tar.gz
systemctl start postern-gateway
check '[ "$(sha256sum /var/lib/postern-gateway/server-ca.pem /var/lib/postern-gateway/connector-ca.key)" = "$ca_before" ]'
check '[ "$(mode /var/lib/postern-gateway/connector-ca.key)" = "600 postern-gateway:postern-gateway" ]'
postern-audit verify /var/lib/postern-gateway/audit
sleep 3
connect_and_fetch

step "10. the services' own view: journal and security"
journalctl -u postern-gateway -u postern-connector --no-pager | tail -n 30
systemd-analyze security --no-pager postern-gateway.service | tail -n 1
systemd-analyze security --no-pager postern-connector.service | tail -n 1

echo
echo "GUIDE STEPS PASSED"
