#!/usr/bin/env bash
# Set up everything quorumlab and its tests need on a fresh Debian machine:
# Debian packages (real etcd for the `etcd` engine and compatibility tests,
# iptables/iproute2 for network-namespace partitions) and a virtualenv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

want=(etcd-server etcd-client iptables iproute2 procps e2fsprogs util-linux openssh-server openssh-client prometheus)
need=()
for p in "${want[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "setup: not root, skipping Debian packages ${need[*]} (etcd-engine and netns tests will be skipped)" >&2
  fi
fi
# Debian's etcd-server enables a system etcd on the default ports; quorumlab never needs it
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi
# nor a system sshd or Prometheus: the tests start their own (sshd inside namespaces they create,
# Prometheus on a free port through `orchestrate up --prometheus`)
for svc in ssh prometheus prometheus-node-exporter; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ready ($(.venv/bin/python --version), $(command -v etcd >/dev/null && etcd --version | head -1 || echo 'no etcd'))"
