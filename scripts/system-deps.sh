#!/usr/bin/env bash
# Debian packages the test suite runs as real peers: the mosquitto MQTT broker, InfluxDB 1.x and
# Chromium (headless, for the page tests; never a browser downloaded by a test tool).
# Installed with apt-get when missing and running as root; otherwise say what to install.
set -euo pipefail
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v influxd >/dev/null || [ -x /usr/bin/influxd ] || need+=(influxdb)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${need[*]} (apt-get)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # the packages may start system services on 1883/8086; the tests use their own on free ports
else
  echo "error: the tests need: ${need[*]}. Install with: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
