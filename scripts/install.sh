#!/usr/bin/env bash
# Installs what weftnet needs on a fresh Debian 12 machine (as root): the kernel tools the
# tests and demo drive, and the project itself (editable) with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg_cmd in iproute2:ip nftables:nft iperf3:iperf3 tcpdump:tcpdump dnsutils:dig procps:pgrep iputils-ping:ping dnsmasq-base:dnsmasq dnsperf:dnsperf; do
  pkg=${pkg_cmd%%:*}; cmd=${pkg_cmd##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test,dev]'
