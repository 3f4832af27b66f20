#!/usr/bin/env bash
# Provision one box: provision.sh control|worker THIS_IP CONTROL_IP
# Installs thingdoer from /opt/thingdoer (make venv), then runs its daemons as systemd units.
set -euo pipefail
role=$1 ip=$2 control=$3
cd /opt/thingdoer
make venv
ln -sf /opt/thingdoer/.venv/bin/thingdoer /usr/local/bin/thingdoer
/usr/local/bin/thingdoer image build-busybox

unit() {  # unit NAME COMMAND...
  local name=$1; shift
  cat > "/etc/systemd/system/thingdoer-$name.service" <<UNIT
[Unit]
Description=thingdoer $name
After=network-online.target

[Service]
ExecStart=$*
Restart=always
RestartSec=1
# Containers outlive the agent: never kill the whole cgroup on stop or restart.
KillMode=process

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --now "thingdoer-$name"
}

etcd="http://$control:2379"
if [ "$role" = control ]; then
  systemctl disable --now etcd 2>/dev/null || true
  unit etcd /usr/bin/etcd --name control --data-dir /var/lib/thingdoer/etcd \
    --listen-client-urls "http://$ip:2379,http://127.0.0.1:2379" --advertise-client-urls "$etcd" \
    --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "control=http://$ip:2380"
  unit apid /usr/local/bin/thingdoer -v apid --etcd-endpoints "$etcd" --listen "0.0.0.0:7070"
  unit schedulerd /usr/local/bin/thingdoer -v schedulerd --etcd-endpoints "$etcd"
  unit reaperd /usr/local/bin/thingdoer -v reaperd --etcd-endpoints "$etcd"
fi
unit workerd /usr/local/bin/thingdoer -v workerd --etcd-endpoints "$etcd" \
  --node-name "$(hostname)" --address "$ip"
echo "export THINGDOER_SERVER=http://$control:7070" > /etc/profile.d/thingdoer.sh
