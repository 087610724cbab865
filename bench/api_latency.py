"""API latency under load: p50/p99 and throughput of POST /jobs and GET /jobs/{id}, 50 concurrent clients.

Starts `sagan api` against Postgres (a throwaway schema) and Redis (db 6, flushed), with no worker, so
the numbers are the API's alone. Prints one JSON line.
    python bench/api_latency.py [--clients 50] [--seconds 10] [--api-workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid

import httpx
import psycopg

PG = os.environ.get("SAGAN_BENCH_PG", "postgresql://root@127.0.0.1:5432/test")
REDIS = os.environ.get("SAGAN_BENCH_REDIS", "redis://127.0.0.1:6379/6")
BODY = {"kind": "train", "config": {"preset": "debug32", "dataset": "synthetic:64", "device": "cpu"}}


async def load(base_url: str, clients: int, seconds: float, request: str, ids: list[str]) -> dict:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            if request == "post":
                response = await http.post("/jobs", json=BODY)
                ids.append(response.json()["id"])
            else:
                response = await http.get(f"/jobs/{random.choice(ids)}")
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "req_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--api-workers", type=int, default=2)
    args = parser.parse_args()

    schema = f"sagan_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "SAGAN_BROKER_URL": REDIS, "SAGAN_HOME": f"/tmp/{schema}",
           "SAGAN_DATABASE_URL": f"{PG.replace('postgresql://', 'postgresql+psycopg://')}"
                                 f"?options=-csearch_path%3D{schema}"}
    api = subprocess.Popen([sys.executable, "-m", "sagan_core.cli", "api", "--port", str(port),
                            "--workers", str(args.api_workers)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base_url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        ids: list[str] = []
        asyncio.run(load(base_url, 4, 2, "post", ids))  # warm-up: imports, connection pools
        post = asyncio.run(load(base_url, args.clients, args.seconds, "post", ids))
        get = asyncio.run(load(base_url, args.clients, args.seconds, "get", ids))
    finally:
        api.terminate()
        api.wait()
        import redis

        redis.Redis.from_url(REDIS).flushdb()
        with psycopg.connect(PG, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")
    print(json.dumps({"bench": "api_latency", "clients": args.clients, "api_workers": args.api_workers,
                      "post_jobs": post, "get_job": get}))


if __name__ == "__main__":
    main()
