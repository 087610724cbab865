"""How fast the jobs page (/) fills its table with 1,000 jobs in the database, in headless Chromium.

Seeds --jobs jobs (mixed statuses, most of the training ones with a sample grid in the artifact store) into
a throwaway SQLite database (or a throwaway PostgreSQL schema with --postgres), starts `sagan api`, and
loads / in Debian's Chromium (driven by Playwright) --loads times:
  - "cold": a new browser context each time (empty cache): the HTML, the CSS and scripts, GET /jobs;
  - "warm": reloads in one context (the static files are cached for a year, so only HTML and GET /jobs).
Each load's figure is the page's own performance mark "jobs-table-filled" (set when the table is
rendered), in ms from the start of the navigation; "thumbnails" is when every thumbnail on the page
is shown. "http" times the same requests made one after another by a plain client (no browser).
Prints one JSON line.

    python bench/ui_jobs_page.py [--jobs 1000] [--loads 20] [--postgres]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG = os.environ.get("SAGAN_BENCH_PG", "postgresql://root@127.0.0.1:5432/test")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
STATUSES = ["succeeded"] * 14 + ["failed", "cancelled", "running", "queued"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def grid_png() -> bytes:
    """A grid-sized PNG (274 px, the size of a 32-px run's 8x8 sample grid)."""
    image = Image.new("RGB", (274, 274))
    image.putdata([(x % 256, y % 256, (x * y) % 256) for y in range(274) for x in range(274)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def seed(count: int, env: dict[str, str]) -> None:
    """Jobs written straight into the database: this is set-up for the bench, not the page's way in."""
    os.environ.update(env)
    from sagan_core.config import make_config
    from sagan_service.db import make_engine, make_session_factory
    from sagan_service.migrate import upgrade
    from sagan_service.models import Artifact, Job, new_job_id, utcnow
    from sagan_service.settings import Settings
    from sagan_service.storage import open_store, sample_key

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database)
    upgrade(engine, "head")
    store, png = open_store(settings), grid_png()
    spec = make_config("sagan32", steps=10_000, sample_every=500).to_dict()
    artifacts = []  # added once the jobs are in (no ORM relationship orders the inserts)
    with make_session_factory(engine)() as session:
        trained = None
        for index in range(count):
            status = STATUSES[index % len(STATUSES)]
            job_id = new_job_id()
            if index % 10 == 9 and trained is not None:  # every tenth: a sample job from a training job
                session.add(Job(id=job_id, kind="sample", status=status, queue="cpu", max_attempts=3,
                                attempt=1,
                                spec={"job_id": trained, "step": 10_000, "n": 64, "seed": 0}, step=0))
                if status == "succeeded":
                    store.put_bytes(key := sample_key(job_id, 10_000), png)
                    artifacts.append(Artifact(job_id=job_id, kind="sample", step=10_000, key=key))
                continue
            step = {"succeeded": 10_000, "queued": 0}.get(status, 500 * (1 + index % 19))
            session.add(Job(id=job_id, kind="train", status=status, queue="cpu", max_attempts=3, attempt=1,
                            spec=spec, step=step, total_steps=10_000, created_at=utcnow(),
                            metrics={"step": step, "d_loss": 1.2, "g_loss": 0.8, "img_per_s": 210.5}
                            if step else None))
            if step:
                key = sample_key(job_id, step // 500 * 500)
                store.put_bytes(key, png)
                artifacts.append(Artifact(job_id=job_id, kind="sample", step=step // 500 * 500, key=key))
            trained = job_id
        session.flush()
        session.add_all(artifacts)
        session.commit()
    engine.dispose()


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median": round(statistics.median(values), 1),
            "p90": round(values[int(0.9 * (len(values) - 1))], 1), "max": round(values[-1], 1)}


def has_grid(job: dict) -> bool:
    """Whether the page shows a thumbnail for this job (jobs.js asks for one in the same cases)."""
    if job["kind"] == "sample":
        return job["status"] == "succeeded"
    step, every = job["progress"]["step"], job["spec"]["sample_every"]
    return (step if job["status"] == "succeeded" else step // every * every) > 0


def browser_loads(base_url: str, loads: int) -> dict[str, dict[str, float]]:
    from playwright.sync_api import sync_playwright

    filled = "performance.getEntriesByName('jobs-table-filled')[0].startTime"
    # Every thumbnail is shown: one per job on the page that has a grid by now.
    expected = sum(has_grid(job)
                   for job in httpx.get(f"{base_url}/jobs", params={"limit": 50}).json()["items"])
    thumbnails = f"() => document.querySelectorAll('img.thumb[src]').length >= {expected}"
    results: dict[str, list[float]] = {"cold": [], "warm": [], "thumbnails_cold": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for _ in range(loads):
            context = browser.new_context()
            page = context.new_page()
            page.goto(base_url + "/")
            page.wait_for_selector("body[data-loaded]", state="attached")
            results["cold"].append(page.evaluate(filled))
            page.wait_for_function(thumbnails)
            results["thumbnails_cold"].append(page.evaluate("performance.now()"))
            context.close()
        context = browser.new_context()
        page = context.new_page()
        page.goto(base_url + "/")
        for _ in range(loads):
            page.reload()
            page.wait_for_selector("body[data-loaded]", state="attached")
            results["warm"].append(page.evaluate(filled))
        browser.close()
    return {name: summary(values) for name, values in results.items()}


def http_loads(base_url: str, loads: int) -> dict[str, float]:
    """The page's requests, one after another, from a plain client: HTML, its static files, GET /jobs."""
    import re

    timings = []
    with httpx.Client(base_url=base_url) as client:
        for _ in range(loads):
            start = time.perf_counter()
            html = client.get("/").text
            for url in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', html):
                client.get(url).raise_for_status()
            assert len(client.get("/jobs", params={"limit": 50}).json()["items"]) == 50
            timings.append(1000 * (time.perf_counter() - start))
    return summary(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--postgres", action="store_true",
                        help=f"a throwaway schema in {PG} instead of SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sagan-ui-bench-") as tmp:
        env = {"SAGAN_HOME": tmp}
        schema = None
        if args.postgres:
            import psycopg

            schema = f"sagan_bench_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(PG, autocommit=True) as connection:
                connection.execute(f"CREATE SCHEMA {schema}")
            env["SAGAN_DATABASE_URL"] = (f"postgresql+psycopg://{PG.split('://', 1)[1]}"
                                         f"?options=-csearch_path%3D{schema}")
        api = None
        try:
            seed(args.jobs, env)
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            # Page speed, not auth: the browser here holds no token (bench/api_latency.py measures with
            # tokens).
            child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "SAGAN_AUTH": "none"}
            api = subprocess.Popen([sys.executable, "-m", "sagan_core.cli", "api", "--port", str(port)],
                                   env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base_url}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            http_loads(base_url, 3)  # warm-up: the API's first requests read and gzip the static files
            result = {"bench": "ui_jobs_page", "jobs": args.jobs,
                      "database": "postgres" if schema else "sqlite",
                      "loads": args.loads, "page_rows": 50, "http_ms": http_loads(base_url, args.loads),
                      **{f"{name}_ms": value for name, value in browser_loads(base_url, args.loads).items()}}
        finally:
            if api is not None:
                api.terminate()
                api.wait(30)
            if schema is not None:
                import psycopg

                with psycopg.connect(PG, autocommit=True) as connection:
                    connection.execute(f"DROP SCHEMA {schema} CASCADE")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
