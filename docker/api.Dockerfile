# The API image: Python 3.12 and the `api` extra, without PyTorch (the API process never imports it;
# tests/test_packaging.py runs `sagan api` from that extra alone). Build from the repository root:
#   docker build -f docker/api.Dockerfile .
FROM python:3.12.12-slim-bookworm

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

# Dependencies first: a change to the code does not install them again.
WORKDIR /tmp/build
COPY pyproject.toml ./
RUN python -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(project['dependencies'] + project['optional-dependencies']['api']))" \
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
