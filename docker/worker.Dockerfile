# The worker image: the `worker` extra (the service's code and PyTorch) and the `ray` extra. By default the
# GPU one: the CUDA 13.0 runtime on Ubuntu 24.04 (Python 3.12) and the cu130 build of the pinned torch,
# which needs an NVIDIA driver >= 580 on the host. Build from the repository root:
#   docker build -f docker/worker.Dockerfile .
# The CPU worker (compose profile `cpu`) is the same file on plain Ubuntu with the +cpu build:
#   --build-arg BASE_IMAGE=ubuntu:24.04 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG BASE_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

# Where the pinned torch/torchvision of requirements.txt come from: the CUDA 13.0 (+cu130) builds,
# matching the base image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SAGAN_HOME=/var/lib/sagan

# Ubuntu's own Python 3.12; the distribution moves patch versions of these packages under a fixed
# release, so they are not pinned (pinning them breaks the build as soon as an update lands).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 sagan \
    && useradd --no-log-init --system --uid 10001 --gid sagan --create-home --home-dir /home/sagan sagan \
    && install -d -o sagan -g sagan /var/lib/sagan /data

# Dependencies first, torch alone in its own layer: a change to the code (or to pyproject.toml)
# does not download torch again.
WORKDIR /tmp/build
COPY requirements.txt ./
# An extra index: torch from it ("+cpu"/"+cu130" sorts above the plain release), the rest as usual.
RUN pip install --extra-index-url "$TORCH_INDEX_URL" -r requirements.txt
COPY pyproject.toml ./
# The dependencies of the extras `api` and `worker` (which names `api` as sagan-service[api]: that line is
# left out) and `ray`: the Celery worker submits jobs to Ray's Jobs API with it, and the Ray head and nodes
# of the compose profile `ray` (docs/ray.md) run them from this image.
RUN python -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = project['optional-dependencies']; print('\n'.join(dep for dep in project['dependencies'] + extras['api'] + extras['worker'] + extras['ray'] if not dep.startswith(project['name'])))" \
        > dependencies.txt \
    && pip install -r dependencies.txt

# Then the source, installed without touching the dependencies.
COPY README.md ./
COPY sagan_core ./sagan_core
COPY sagan_service ./sagan_service
COPY api ./api
COPY worker ./worker
COPY sagan_client ./sagan_client
RUN pip install --no-deps /tmp/build \
    && rm -rf /tmp/build

WORKDIR /var/lib/sagan
USER 10001:10001
CMD ["sagan", "worker"]
