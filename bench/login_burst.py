"""Measure WebSocket ping round-trips on a worker while it hashes a burst of logins.

Usage: python bench/login_burst.py --url http://127.0.0.1:8000 [--logins 20]

Registers a user, opens one WebSocket, measures `ping` -> `pong` round-trips for a second
at rest, then again while `--logins` concurrent POST /users/login requests run, and prints
one JSON line with p50/p99/max of both. Every wait has a timeout; the run ends by itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.request

from websockets.sync.client import connect


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def round_trips(ws, seconds: float) -> list[float]:
    samples: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        ws.send('{"type":"ping"}')
        while json.loads(ws.recv(timeout=10))["type"] != "pong":
            pass
        samples.append((time.perf_counter() - started) * 1000)
        time.sleep(0.005)
    return samples


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 2),
        "max_ms": round(ordered[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--logins", type=int, default=20)
    args = parser.parse_args()
    name, password = f"burst{time.time_ns()}", "bench-password"
    token = post(args.url + "/users/register", {"username": name, "password": password})["token"]
    login = {"username": name, "password": password}
    with connect(args.url.replace("http", "ws", 1) + "/ws?token=" + token) as ws:
        at_rest = round_trips(ws, 1.0)
        threads = [
            threading.Thread(target=post, args=(args.url + "/users/login", login))
            for _ in range(args.logins)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        during = round_trips(ws, 1.0)
        for thread in threads:
            thread.join(60)
        burst = time.perf_counter() - started
    print(
        json.dumps(
            {
                "logins": args.logins,
                "burst_seconds": round(burst, 2),
                "ping_at_rest": summary(at_rest),
                "ping_during_logins": summary(during),
            }
        )
    )


if __name__ == "__main__":
    main()
