"""The worker's data cache (worker/data_cache.py) against the moto S3 server: fetching, checking, sharing
between processes, eviction, outages; the resolution of `ds:` and `packed:s3://` specs; and a training
job on a packed set in S3, then an eval job on it by a second worker with a cache of its own."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from pathlib import Path

import pytest

from sagan_core.config import make_config
from sagan_core.dataspec import DatasetError
from sagan_core.packed import INDEX_FILE, index_files, pack, read_index
from sagan_service.jobspec import EvalSpec
from sagan_service.settings import Settings
from sagan_service.storage import S3Store, packed_prefix
from tests.service.conftest import BUCKET, TINY, WORKER, Api, S3Server, Service, Workers, wait_for
from worker.data_cache import FETCH_TRIES, DataCache, DataCacheError
from worker.datasets import resolve_dataset_specs
from worker.outages import Outage

IMSIZE = 32  # debug32's image size
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


class CountingStore(S3Store):
    """An S3 store that notes each download (a line in `record`, so other processes' count too), optionally
    slowly (to make two fetches overlap) or with the first download of each `damaged` file corrupted."""

    def __init__(self, endpoint: str, record: Path, *, max_attempts: int = 2, delay_s: float = 0.0,
                 damaged: tuple[str, ...] = ()) -> None:
        super().__init__(BUCKET, "", endpoint_url=endpoint, public_endpoint_url=None,
                         max_attempts=max_attempts)
        self.record, self.delay_s, self.damaged = record, delay_s, set(damaged)

    def download(self, key: str, path: Path) -> None:
        time.sleep(self.delay_s)
        super().download(key, path)
        with open(self.record, "a") as handle:
            handle.write(key + "\n")
        name = key.rpartition("/")[2]
        if name in self.damaged:
            self.damaged.discard(name)
            path.write_bytes(b"not what was packed" + path.read_bytes()[20:])

    def downloads(self) -> list[str]:
        return self.record.read_text().splitlines() if self.record.exists() else []


@pytest.fixture(autouse=True)
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def packed_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shapes:64 packed at 32 px into several small shards."""
    out = tmp_path_factory.mktemp("packed") / "shapes"
    pack("shapes:64", out, imsize=IMSIZE, shard_mb=0.05)
    return out


def upload(store: S3Store, directory: Path, prefix: str) -> None:
    """A packed set into the store under prefix, its index last (as the dataset job writes it)."""
    for path in sorted(directory.iterdir(), key=lambda path: path.name == INDEX_FILE):
        store.put_file(prefix + path.name, path)


@pytest.fixture
def store(s3_server: S3Server, tmp_path: Path) -> CountingStore:
    return CountingStore(s3_server.endpoint, tmp_path / "downloads")


@pytest.fixture
def prefix(store: CountingStore, packed_set: Path) -> str:
    prefix = f"sets/{uuid.uuid4().hex[:8]}/"
    upload(store, packed_set, prefix)
    return prefix


def make_cache(root: Path, store: S3Store, limit_bytes: int = 10**9, wait=time.sleep) -> DataCache:
    return DataCache(root, store, limit_bytes, Outage(store.describe(), 60), wait)


def data_files(directory: Path) -> list[str]:
    return [name for name, _, _ in index_files(read_index(directory))]


def test_a_fetch_fills_an_empty_cache_and_the_next_one_downloads_nothing(
        store: CountingStore, prefix: str, packed_set: Path, tmp_path: Path) -> None:
    directory = make_cache(tmp_path / "cache", store).fetch(prefix)
    names = data_files(packed_set)
    assert len(names) >= 3 and sorted(store.downloads()) == sorted(prefix + name for name in names)
    for name in [*names, INDEX_FILE]:
        assert (directory / name).read_bytes() == (packed_set / name).read_bytes()
    assert not list(directory.glob("*.part")) and not list(directory.glob(".*.part"))

    again = make_cache(tmp_path / "cache", store).fetch(prefix)  # another job on the machine
    assert again == directory and len(store.downloads()) == len(names)


def test_a_damaged_file_in_the_cache_is_fetched_again(store: CountingStore, prefix: str, packed_set: Path,
                                                      tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "cache", store)
    directory = cache.fetch(prefix)
    shard = sorted(directory.glob("shard-*.npy"))[1]
    shard.write_bytes(b"\0" * shard.stat().st_size)
    before = len(store.downloads())
    assert cache.fetch(prefix) == directory
    assert store.downloads()[before:] == [prefix + shard.name]
    assert shard.read_bytes() == (packed_set / shard.name).read_bytes()


def test_a_download_that_fails_its_check_is_fetched_again(s3_server: S3Server, prefix: str, packed_set: Path,
                                                          tmp_path: Path) -> None:
    flaky = CountingStore(s3_server.endpoint, tmp_path / "downloads", damaged=("shard-00001.npy",))
    directory = make_cache(tmp_path / "cache", flaky).fetch(prefix)
    assert flaky.downloads().count(prefix + "shard-00001.npy") == 2
    assert (directory / "shard-00001.npy").read_bytes() == (packed_set / "shard-00001.npy").read_bytes()


def test_a_stored_file_with_wrong_bytes_fails_clearly_and_leaves_no_usable_set(
        store: CountingStore, prefix: str, tmp_path: Path) -> None:
    store.put_bytes(prefix + "shard-00001.npy", b"damaged in the store")
    cache = make_cache(tmp_path / "cache", store)
    with pytest.raises(DataCacheError, match=r"shard-00001\.npy failed its sha256 check 3 times") as error:
        cache.fetch(prefix)
    assert prefix in str(error.value) and "pack the set again" in str(error.value)
    assert store.downloads().count(prefix + "shard-00001.npy") == FETCH_TRIES
    (directory,) = [path for path in (tmp_path / "cache").iterdir() if not path.name.startswith(".")]
    assert not (directory / INDEX_FILE).exists() and not (directory / "shard-00001.npy").exists()


def test_a_missing_set_fails_clearly(store: CountingStore, tmp_path: Path) -> None:
    with pytest.raises(DataCacheError, match=r"the packed data set at nothing/here/ in the artifact store .* "
                                             r"does not exist"):
        make_cache(tmp_path / "cache", store).fetch("nothing/here")


def fetch_in_process(endpoint: str, record: str, root: str, prefix: str, barrier: object,
                     results: object) -> None:
    """Run in a fresh process: what a second worker (or rank) on the machine does."""
    store = CountingStore(endpoint, Path(record), delay_s=0.3)
    barrier.wait()  # type: ignore[attr-defined]
    results.put(str(make_cache(Path(root), store).fetch(prefix)))  # type: ignore[attr-defined]


def test_two_processes_fetching_at_once_download_the_set_once(store: CountingStore, prefix: str,
                                                              packed_set: Path, tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # the moto server's threads live in this process
    barrier, results = context.Barrier(2), context.Queue()
    args = (store.endpoint_url, str(store.record), str(tmp_path / "cache"), prefix, barrier, results)
    processes = [context.Process(target=fetch_in_process, args=args) for _ in range(2)]
    for process in processes:
        process.start()
    first, second = results.get(timeout=120), results.get(timeout=120)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert first == second
    assert sorted(store.downloads()) == sorted(prefix + name for name in data_files(packed_set))


def test_eviction_keeps_the_limit_by_last_use_and_never_takes_a_set_in_use(
        store: CountingStore, packed_set: Path, tmp_path: Path) -> None:
    a, b, c, d = prefixes = [f"lru/{uuid.uuid4().hex[:8]}-{name}/" for name in "abcd"]
    for prefix in prefixes:
        upload(store, packed_set, prefix)
    one_set = sum(path.stat().st_size for path in packed_set.iterdir())
    root = tmp_path / "cache"
    cache = make_cache(root, store, limit_bytes=int(2.5 * one_set))  # room for two sets

    in_a, in_b = cache.fetch(a), cache.fetch(b)
    cache.fetch(a)  # a hit: now b is the least recently used
    in_c = cache.fetch(c)
    assert set(_complete_sets(root)) == {in_a, in_c} and not in_b.exists()
    with cache.use(c):
        cache.fetch(a)  # now c is the least recently used, but in use
        in_d = cache.fetch(d)
        assert set(_complete_sets(root)) == {in_c, in_d}
    assert len(store.downloads()) == 4 * len(data_files(packed_set))  # the hits downloaded nothing
    assert sum(path.stat().st_size for path in root.rglob("*") if path.is_file()
               and ".locks" not in path.parts) <= 2.5 * one_set


def _complete_sets(root: Path) -> list[Path]:
    return [path for path in root.iterdir() if (path / INDEX_FILE).exists()]


def test_a_store_outage_during_a_fetch_is_waited_out(s3_server: S3Server, prefix: str, packed_set: Path,
                                                     tmp_path: Path) -> None:
    store = CountingStore(s3_server.endpoint, tmp_path / "downloads", max_attempts=1)
    waits: list[float] = []
    cache = make_cache(tmp_path / "cache", store, wait=lambda s: (waits.append(s), time.sleep(s)))
    fetched: list[Path] = []
    with s3_server.down():
        thread = threading.Thread(target=lambda: fetched.append(cache.fetch(prefix)))
        thread.start()
        wait_for(lambda: waits, 30, "the fetch to wait for the store")
        time.sleep(1)
    thread.join(60)
    assert fetched and (fetched[0] / INDEX_FILE).exists() and len(waits) >= 1
    assert (fetched[0] / "labels.npy").read_bytes() == (packed_set / "labels.npy").read_bytes()


def test_ds_and_packed_s3_specs_resolve_to_the_cached_copy(store: CountingStore, packed_set: Path,
                                                           tmp_path: Path, s3_server: S3Server) -> None:
    dataset_id = uuid.uuid4().hex
    upload(store, packed_set, packed_prefix(dataset_id, IMSIZE))
    settings = Settings(s3_endpoint_url=s3_server.endpoint)
    cache = make_cache(tmp_path / "cache", store)
    opened: list[tuple[str, str]] = []

    def open_set(where: S3Store, prefix: str) -> Path:
        opened.append((where.bucket, prefix))
        return cache.fetch(prefix) if where is store else Path("/elsewhere")

    train = make_config("debug32", dataset=f"ds:{dataset_id}", eval_dataset=f"ds:{dataset_id}", steps=3)
    resolved = resolve_dataset_specs(train, store=store, settings=settings, open_set=open_set)
    directory = Path(resolved.dataset.removeprefix("packed:"))
    assert resolved == train.model_copy(update={"dataset": f"packed:{directory}",
                                                "eval_dataset": f"packed:{directory}"})
    assert (directory / INDEX_FILE).read_bytes() == (packed_set / INDEX_FILE).read_bytes()
    assert opened == [(BUCKET, f"datasets/{dataset_id}/{IMSIZE}px/")]  # once for both fields
    assert train.dataset == f"ds:{dataset_id}"  # the stored spec keeps what the user wrote

    evaluation = EvalSpec(job_id="j", step=3, dataset="packed:s3://other-bucket/some/sets/", metrics=["swd"],
                          n=64, seed=0, imsize=IMSIZE, center_crop=None)
    assert resolve_dataset_specs(evaluation, store=store, settings=settings, open_set=open_set) == \
        evaluation.model_copy(update={"dataset": "packed:/elsewhere"})
    assert opened[-1] == ("other-bucket", "some/sets")
    in_place = make_config("debug32", dataset="folder:/data/x")
    assert resolve_dataset_specs(in_place, store=store, settings=settings, open_set=open_set) == in_place
    with pytest.raises(DatasetError, match="ds:ID takes a data set id"):
        resolve_dataset_specs(evaluation.model_copy(update={"dataset": "ds:../jobs"}), store=store,
                              settings=settings, open_set=open_set)


@pytest.mark.timeout(600)
def test_a_job_trains_on_a_packed_set_in_s3_and_a_second_worker_evaluates_it_from_its_own_cache(
        api: Api, workers: Workers, service_env: dict[str, str], tmp_service: Path, s3_server: S3Server,
        packed_set: Path) -> None:
    artifacts = S3Store(BUCKET, "artifacts", endpoint_url=s3_server.endpoint, public_endpoint_url=None,
                        max_attempts=2)
    prefix = packed_prefix(uuid.uuid4().hex, IMSIZE)  # where the dataset job puts a data set's copy
    upload(artifacts, packed_set, prefix)
    spec = f"packed:s3://{BUCKET}/artifacts/{prefix}"
    config = {**TINY, "dataset": spec, "steps": 10, "eval_every": 10, "eval_metrics": ["swd"], "eval_n": 32}
    job = api.submit({"kind": "train", "config": config})
    done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=300)
    assert done["status"] == "succeeded", done
    assert done["spec"]["dataset"] == spec  # the local copy is the worker's business
    first_cache = Path(service_env["SAGAN_HOME"]) / "data-cache"
    assert len(_complete_sets(first_cache)) == 1
    assert [e["step"] for e in api.client.get(f"/jobs/{job['id']}/evals").json()["items"]] == [0, 10]

    workers.current.stop()
    second_cache = tmp_service / "second-data-cache"
    second = Service([*WORKER, "--loglevel", "WARNING"],
                     {**service_env, "SAGAN_DATA_CACHE_DIR": str(second_cache)},
                     tmp_service / "worker-second-cache.log")
    workers.all.append(second)  # stopped with the others; later tests run on it
    evaluation = api.submit({"kind": "eval", "source": {"job_id": job["id"], "step": None}, "n": 32})
    assert evaluation["spec"]["dataset"] == spec
    finished = api.wait_status(evaluation["id"], {"succeeded", "failed"}, timeout=240)
    assert finished["status"] == "succeeded", finished
    (result,) = api.client.get(f"/jobs/{evaluation['id']}/evals").json()["items"]
    assert result["metrics"]["swd"] > 0
    (copy,) = _complete_sets(second_cache)
    assert (copy / INDEX_FILE).read_bytes() == (packed_set / INDEX_FILE).read_bytes()
