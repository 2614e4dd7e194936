#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver (packages `chromium`, `chromium-driver`) when
# they are missing. The console's end-to-end tests start chromedriver on loopback and drive a
# headless Chromium with it; nothing else uses them.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "chromium: $(chromium --version 2>/dev/null | head -n 1); $(chromedriver --version | head -n 1)"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
echo "chromium: $(chromium --version 2>/dev/null | head -n 1); $(chromedriver --version | head -n 1)"
