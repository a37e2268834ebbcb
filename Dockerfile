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

# Dependencies first, exactly as locked (versions and hashes), so editing the code does not
# reinstall Dagster. The product's lock only: no embedded Postgres or Valkey, no test tools.
COPY requirements/product.lock ./requirements/product.lock
RUN pip install -r requirements/product.lock

# The project itself, on top of the locked dependencies. README.m[d] copies README.md when it
# exists (it is only package metadata); pyproject.toml in the same COPY keeps the pattern legal.
COPY pyproject.toml README.m[d] ./
COPY event_ingest ./event_ingest
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info

# Instance config (Postgres storage, queued runs); compose also mounts it so an
# edit takes effect on restart. The compose workspace points at the code server.
COPY deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
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

CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "event_ingest.definitions"]
