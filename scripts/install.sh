#!/usr/bin/env bash
# Installs what weftnet needs on a fresh Debian 12 machine (as root): the kernel tools the
# tests and demo drive, and the project itself (editable) with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg_cmd in iproute2:ip nftables:nft iperf3:iperf3 tcpdump:tcpdump dnsutils:dig procps:pgrep iputils-ping:ping dnsmasq-base:dnsmasq dnsperf:dnsperf faketime:faketime; do
  pkg=${pkg_cmd%%:*}; cmd=${pkg_cmd##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# A real container runtime for the CNI plugin's test (tests/netns/test_cni.py): podman with
# its CNI backend and runc (crun fails here), the stock plugins, busybox for a tiny image.
for pkg_cmd in podman:podman runc:runc busybox-static:busybox; do
  pkg=${pkg_cmd%%:*}; cmd=${pkg_cmd##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
[ -x /usr/lib/cni/loopback ] || need+=(containernetworking-plugins)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test,dev]'
