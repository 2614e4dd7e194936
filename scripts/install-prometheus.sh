#!/usr/bin/env bash
# Installs a Prometheus server (Debian's `prometheus` package) when none is on PATH. The tests
# start it themselves on loopback to scrape a running worker; nothing else uses it.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  echo "prometheus: $(prometheus --version 2>&1 | head -n 1)"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "prometheus: $(prometheus --version 2>&1 | head -n 1)"
