#!/usr/bin/env bash
# Installs what the suite needs on a fresh Debian/Ubuntu machine (run as root): the real tools
# it drives (tcpdump, iproute2, iperf3, OpenSSH, tshark with capinfos/editcap for the capture's
# dissection) and a venv in .venv from requirements.txt.
set -euo pipefail
cd "$(dirname "$0")"
need=()
for pkg_cmd in tcpdump:tcpdump iproute2:ip iperf3:iperf3 openssh-server:sshd openssh-client:ssh procps:pgrep \
    tshark:tshark wireshark-common:capinfos wireshark-common:editcap; do
  command -v "${pkg_cmd#*:}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pkg_cmd#*:}" ] || need+=("${pkg_cmd%%:*}")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: error: missing ${need[*]}: run as root (the two-host emulation needs root too)" >&2
    exit 2
  fi
  # wireshark-common asks whether non-root users may capture; answer no (we capture as root) so
  # the install never stops at a debconf prompt
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
echo "setup.sh: ready (.venv, $(tcpdump --version 2>&1 | head -1), $(iperf3 --version | head -1 | cut -d' ' -f1-2), $(tshark --version 2>/dev/null | head -1 | cut -d' ' -f1-3))"
