#!/usr/bin/env bash
# Debian packages the app and the test suite need: the mosquitto MQTT broker, InfluxDB 1.x,
# Chromium (headless, for the page tests; never a browser downloaded by a test tool), nginx (the
# reverse-proxy snippet is tested for real), poppler-utils (the PDF text is checked with pdftotext),
# and for weasyprint: Pango, HarfBuzz's subsetter (about 2.7x faster PDFs) and the DejaVu fonts.
# Installed with apt-get when missing and running as root; otherwise say what to install.
set -euo pipefail
# With the argument "runtime", only what the app itself needs (for ./scripts/run.sh).
need=()
for lib in libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core; do
  dpkg -s "$lib" >/dev/null 2>&1 || need+=("$lib")
done
if [ "${1:-}" != runtime ]; then
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v influxd >/dev/null || [ -x /usr/bin/influxd ] || need+=(influxdb)
command -v chromium >/dev/null || need+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v pdftotext >/dev/null || need+=(poppler-utils)
fi
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
