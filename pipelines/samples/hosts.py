"""Writes hosts.jsonl: four hosts reporting every minute, with labelled anomalies.

python3 pipelines/samples/hosts.py > pipelines/samples/hosts.jsonl

Six hours of ordinary readings first: built-in detectors judge each host against its own
history, and stay quiet until they have learned it (about 230 readings).

- web-1: errors and a latency spike together at minute 410 (the failing_and_slow rule)
- web-2: a single latency spike at minute 390
- web-3: latency level up 60% from minute 400 on (a shift)
- web-4: cpu pegged with memory low and latency ordinary at minute 420 (an odd combination)
"""
import json
import random
from datetime import datetime, timedelta, timezone

random.seed(11)
start = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)
base = {"web-1": 120.0, "web-2": 80.0, "web-3": 200.0, "web-4": 60.0}
for minute in range(440):
    for host, latency in base.items():
        lat = random.gauss(latency, latency * 0.05)
        cpu = min(100.0, max(0.0, random.gauss(35, 4)))
        mem = min(100.0, max(0.0, random.gauss(60, 3)))
        errors = 0
        if host == "web-1" and minute == 410:
            lat, errors = latency * 6, 12
        if host == "web-2" and minute == 390:
            lat = latency * 8
        if host == "web-3" and minute >= 400:
            lat = random.gauss(latency * 1.6, latency * 0.05)
        if host == "web-4" and minute == 420:
            cpu, mem = 99.0, 20.0
        at = start + timedelta(minutes=minute)
        print(json.dumps({
            "host": host,
            "latencyMs": round(lat, 1),
            "cpu": round(cpu, 1),
            "memory": round(mem, 1),
            "errors": errors,
            "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }))
