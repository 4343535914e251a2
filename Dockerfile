# syntax=docker/dockerfile:1
# One image for both processes: `kafkashake producer run …` or `kafkashake consumer run …`.

FROM python:3.12-slim AS build
WORKDIR /src
# Only what pyproject.toml declares goes into the build.
COPY pyproject.toml README.md ./
COPY command/ command/
COPY producer/ producer/
COPY consumer/ consumer/
COPY schemas/ schemas/
COPY oplog/ oplog/
COPY runtime/ runtime/
RUN python -m venv /opt/kafkashake \
    && /opt/kafkashake/bin/pip install --no-cache-dir ".[codecs]"

FROM python:3.12-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin kafkashake
COPY --from=build /opt/kafkashake /opt/kafkashake
ENV PATH=/opt/kafkashake/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KAFKASHAKE_METRICS_HOST=0.0.0.0 \
    KAFKASHAKE_LOG_FORMAT=json
USER 10001
EXPOSE 9100 9101
# GET /healthz of whichever process runs here (producer port 9100, consumer 9101, or the ports configured).
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 CMD ["kafkashake", "healthcheck"]
ENTRYPOINT ["kafkashake"]
CMD ["--help"]
