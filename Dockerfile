# The spendstream worker image, for docker-compose.yml and production.
#
# Two stages: the first builds and installs the package (a regular, non-editable install:
# the wheel carries the schemas, migrations and example config, see streams/resources.py)
# into a virtualenv; the second copies only that virtualenv, so neither the source tree
# nor pip's build tools are in the image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY schemas ./schemas
COPY clickhouse ./clickhouse
COPY config ./config
RUN python -m venv /opt/spendstream \
    && /opt/spendstream/bin/pip install --no-cache-dir . \
    && /opt/spendstream/bin/pip uninstall --yes pip

FROM python:3.11-slim
COPY --from=build /opt/spendstream /opt/spendstream
RUN useradd --system --home-dir /var/lib/spendstream spendstream \
    && mkdir -p /var/lib/spendstream && chown spendstream /var/lib/spendstream
USER spendstream
WORKDIR /var/lib/spendstream
ENV PATH=/opt/spendstream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SPENDSTREAM_WORKER_DATA_DIR=/var/lib/spendstream
# The worker's HTTP endpoints (SPENDSTREAM_WEB_PORT); bind them with SPENDSTREAM_WEB_HOST.
EXPOSE 6066
ENTRYPOINT ["spendstream"]
CMD ["worker"]
