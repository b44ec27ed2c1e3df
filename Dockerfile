# The spendstream worker image, for docker-compose.yml and production.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY schemas ./schemas
COPY clickhouse ./clickhouse
COPY config ./config
RUN pip install --no-cache-dir -e . \
    && useradd --system --home /app spendstream \
    && mkdir -p /var/lib/spendstream && chown spendstream /var/lib/spendstream
USER spendstream
ENV SPENDSTREAM_WORKER_DATA_DIR=/var/lib/spendstream
ENTRYPOINT ["spendstream"]
CMD ["worker"]
