# One image for every role in docker-compose.yml: the gRPC code server (default
# CMD), dagster-webserver, dagster-daemon and the mock event sources. Only the
# command differs between them.
#
#   docker build -t event-ingest:local .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

WORKDIR /opt/dagster/app

# Dependencies first, from pyproject.toml alone, so editing the code does not
# reinstall Dagster: install against an empty stand-in package, then drop it.
COPY pyproject.toml ./
RUN mkdir event_ingest \
    && touch event_ingest/__init__.py \
    && pip install . \
    && pip uninstall -y event-ingest \
    && rm -rf event_ingest build ./*.egg-info

# The project itself. README.m[d] copies README.md when it exists (it is only
# package metadata); pyproject.toml in the same COPY keeps the pattern legal
# when it does not.
COPY pyproject.toml README.m[d] ./
COPY event_ingest ./event_ingest
RUN pip install --no-deps --force-reinstall . \
    && rm -rf build ./*.egg-info

# Instance config (Postgres storage, queued runs); compose also mounts it so an
# edit takes effect on restart. The compose workspace points at the code server.
COPY dagster.yaml ${DAGSTER_HOME}/dagster.yaml
COPY deploy/workspace.docker.yaml /opt/dagster/app/workspace.docker.yaml

# Non-root. $DAGSTER_HOME/storage (compute logs) must be writable; it exists in
# the image so a fresh named volume mounted there inherits the ownership.
RUN groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid dagster --home-dir ${DAGSTER_HOME} --no-create-home dagster \
    && mkdir -p ${DAGSTER_HOME}/storage \
    && chown -R dagster:dagster ${DAGSTER_HOME}
USER dagster

# 3000 dagster-webserver, 4000 gRPC code server (mock sources use 3001-3003 in compose).
EXPOSE 3000 4000

CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "event_ingest.defs.definitions"]
