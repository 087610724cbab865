"""API latency under load: p50/p99 and throughput of POST /jobs and GET /jobs/{id}, 50 concurrent clients.

Starts `sagan api` against Postgres (a throwaway schema) and Redis (db 6, flushed), with no worker, so
the numbers are the API's alone. Auth is on (SAGAN_AUTH=tokens, the default): GETs carry an admin token made
for the run; POSTs go round --owners user tokens (20), each allowed --queue-limit queued jobs (1000), so the
thousands of jobs the run queues stay within the per-owner limit, which is checked on every POST as usual.
Prints one JSON line. For each request kind, two measurements:
  - "max":   each client sends its next request as soon as the last answers (closed loop): throughput.
  - "rate":  the clients together send --rate requests/s on a fixed schedule (open loop), latency
             counted from the scheduled send time, so a slow answer cannot hide the queue behind it.
The load generator is a minimal HTTP/1.1 keep-alive client on raw asyncio sockets: a general client
such as httpx costs more CPU per request than the API itself and would measure itself.
    python bench/api_latency.py [--clients 50] [--seconds 10] [--rate 500] [--api-workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sagan_service (the token)

PG = os.environ.get("SAGAN_BENCH_PG", "postgresql://root@127.0.0.1:5432/test")
REDIS = os.environ.get("SAGAN_BENCH_REDIS", "redis://127.0.0.1:6379/6")
BODY = json.dumps({"kind": "train", "config": {"preset": "debug32", "dataset": "synthetic:64",
                                               "device": "cpu"}}).encode()
CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
AUTHORIZATION = {"admin": "", "owners": itertools.cycle([""])}  # set once the run's tokens exist


def http_request(method: str, path: str, body: bytes = b"") -> bytes:
    authorization = next(AUTHORIZATION["owners"]) if method == "POST" else AUTHORIZATION["admin"]
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n{authorization}"
    if body:
        head += "Content-Type: application/json\r\n"
    return head.encode() + b"\r\n" + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 2"):
        raise RuntimeError(f"unexpected answer: {head[:60]!r}")
    return await reader.readexactly(int(CONTENT_LENGTH.search(head).group(1)))


async def load(port: int, clients: int, seconds: float, make_request, rate: float | None) -> dict:
    """Run `clients` connections for `seconds`; rate=None is closed loop, else open loop at `rate`/s."""
    latencies: list[float] = []
    start = time.perf_counter() + 0.1
    deadline = start + seconds

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = 0
        while True:
            if rate is None:
                scheduled = time.perf_counter()
            else:  # client i sends at start + (i + k * clients) / rate
                scheduled = start + (index + sent * clients) / rate
                await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            if scheduled >= deadline:
                break
            await exchange(reader, writer, make_request())
            latencies.append(time.perf_counter() - scheduled)
            sent += 1
        writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"requests": len(latencies), "req_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2)}


async def create_jobs(port: int, count: int) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ids = [json.loads(await exchange(reader, writer, http_request("POST", "/jobs", BODY)))["id"]
           for _ in range(count)]
    writer.close()
    return ids


def make_tokens(database_url: str, owners: int) -> tuple[str, list[str]]:
    """An admin token and `owners` user tokens."""
    from sagan_service.auth import create_token
    from sagan_service.db import make_engine, make_session_factory

    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        admin = create_token(session, name="bench", admin=True)
        users = [create_token(session, name=f"bench-user-{i}", admin=False) for i in range(owners)]
    engine.dispose()
    return admin, users


def measure(port: int, args: argparse.Namespace) -> dict:
    ids = asyncio.run(create_jobs(port,
                                  200))  # also warms imports and connection pools (GETs: admin sees all)

    def post() -> bytes:
        return http_request("POST", "/jobs", BODY)

    def get() -> bytes:
        return http_request("GET", f"/jobs/{random.choice(ids)}")

    results = {}
    gc.disable()  # the load generator's own collections would show up as API latency
    for name, make_request, rate in (("post_jobs", post, args.post_rate), ("get_job", get, args.rate)):
        results[name] = {
            "max": asyncio.run(load(port, args.clients, args.seconds, make_request, None)),
            "rate": asyncio.run(load(port, args.clients, args.seconds, make_request, rate)),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=500, help="open-loop GET rate, requests/s")
    parser.add_argument("--post-rate", type=float, default=100, help="open-loop POST rate, requests/s")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--owners", type=int, default=20, help="user tokens the POSTs go round")
    parser.add_argument("--queue-limit", type=int, default=1000,
                        help="SAGAN_MAX_QUEUED_PER_OWNER for the run (the default, 50, would refuse most "
                             "POSTs)")
    args = parser.parse_args()

    schema = f"sagan_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "SAGAN_BROKER_URL": REDIS, "SAGAN_HOME": f"/tmp/{schema}", "SAGAN_AUTH": "tokens",
           "SAGAN_MAX_QUEUED_PER_OWNER": str(args.queue_limit),
           "SAGAN_DATABASE_URL": f"{PG.replace('postgresql://', 'postgresql+psycopg://')}"
                                 f"?options=-csearch_path%3D{schema}"}
    api = subprocess.Popen([sys.executable, "-m", "sagan_core.cli", "api", "--port", str(port),
                            "--workers", str(args.api_workers)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        admin, users = make_tokens(env["SAGAN_DATABASE_URL"], args.owners)
        AUTHORIZATION["admin"] = f"Authorization: Bearer {admin}\r\n"
        AUTHORIZATION["owners"] = itertools.cycle([f"Authorization: Bearer {user}\r\n" for user in users])
        results = measure(port, args)
    finally:
        api.terminate()
        api.wait()
        import redis

        redis.Redis.from_url(REDIS).flushdb()
        with psycopg.connect(PG, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")
    print(json.dumps({"bench": "api_latency", "clients": args.clients, "api_workers": args.api_workers,
                      "seconds": args.seconds, "cpus": os.cpu_count(), **results}))


if __name__ == "__main__":
    main()
