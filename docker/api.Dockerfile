# The API image (also the CPU worker's): Python 3.12 and the CPU build of the pinned torch.
# The API imports torch only to check the data set of a submitted job (sagan_core.data); the CUDA
# build would add gigabytes for nothing. Build from the repository root:
#   docker build -f docker/api.Dockerfile .
FROM python:3.12.12-slim-bookworm

# Where the pinned torch/torchvision of requirements.txt come from (their +cpu builds).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SAGAN_HOME=/var/lib/sagan

RUN python -m venv /opt/venv \
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
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
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
EXPOSE 8000
CMD ["sagan", "api", "--host", "0.0.0.0", "--port", "8000"]
