#!/usr/bin/env bash
# Install promtool, Prometheus and Alertmanager from Debian's packages when they are missing;
# with --pushgateway also Prometheus Pushgateway, the peer `make bench` measures against.
# The tests run the real binaries; nothing is started here.
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
if [ "${1:-}" = --pushgateway ]; then
  command -v prometheus-pushgateway >/dev/null 2>&1 || need+=(prometheus-pushgateway)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-prometheus: missing ${need[*]}. Run this as root on Debian/Ubuntu, or install" \
       "Prometheus 2.x and Alertmanager so that promtool and prometheus-alertmanager are on PATH." >&2
  exit 1
fi

# The packages ship init scripts; policy-rc.d keeps them from starting daemons on the
# default ports 9090/9093 while installing.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT

echo "install-prometheus: installing ${need[*]} from Debian's packages"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
