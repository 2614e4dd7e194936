#!/usr/bin/env bash
# Memory of a large HTTP upload: streams a generated CSV of SIZE_MB megabytes (default 1024)
# to a release `anom coordinator` through `curl -T -` (chunked: the body is produced as it is
# sent), and reports the coordinator's peak resident memory (VmHWM) before and after, the
# events accepted and the time. A worker is not needed: ingest stores events in JetStream.
#
#   cargo build --release -p anom && loadtest/upload-memory.sh [SIZE_MB]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
size_mb="${1:-1024}"
export PATH="$PWD/.tools/bin:$PATH"
scripts/install-nats-server.sh >/dev/null
dir="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port="$(port)"; grpc_port="$(port)"; http_port="$(port)"
nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$dir/nats" >"$dir/nats.log" 2>&1 &
sleep 1
ANOM_LOG=warn target/release/anom coordinator --nats "nats://127.0.0.1:$nats_port" \
  --listen "127.0.0.1:$grpc_port" --state-dir "$dir/coordinator" \
  --http-addr "127.0.0.1:$http_port" 2>"$dir/coordinator.log" &
coordinator=$!
base="http://127.0.0.1:$http_port"
for _ in $(seq 100); do curl -sf "$base/v1/pipelines" >/dev/null && break; sleep 0.2; done
curl -sf "$base/v1/pipelines" -H 'content-type: application/yaml' --data-binary @- >/dev/null <<'YAML'
name: upload
key: user
schema:
  user:   { type: string, required: true }
  amount: float
  note:   string
YAML
hwm() { awk '/VmHWM/ {print $2 / 1024 " MB"}' "/proc/$coordinator/status"; }
echo "coordinator peak RSS before: $(hwm)"
start=$(date +%s.%N)
python3 - "$size_mb" <<'PY' | curl -s -X POST -T - "$base/v1/pipelines/upload/events" -H 'content-type: text/csv' -o "$dir/answer.json"
import sys
limit = int(sys.argv[1]) << 20
out = sys.stdout.buffer
out.write(b"user,amount,note\n")
written, i = 0, 0
rows = []
while written < limit:
    rows.append(b"user-%d,%d.25,some words about this expense number %d\n" % (i % 10000, i % 977, i))
    i += 1
    if len(rows) == 10000:
        chunk = b"".join(rows); rows = []
        out.write(chunk); written += len(chunk)
if rows:
    out.write(b"".join(rows))
PY
end=$(date +%s.%N)
echo "answer: $(head -c 300 "$dir/answer.json")"
echo "coordinator peak RSS after a ${size_mb} MB upload: $(hwm); $(python3 -c "print(round($end - $start, 1))") s"
