# Chrono Flight server image. Stage 1 builds wheels of the package and its runtime
# dependencies (no dev extra); stage 2 installs only those wheels on a slim base and
# runs as a non-root user with the data directory on a volume. The table DDL and the
# catalogue (`schemas/`) travel inside the wheel, as package data of flight_server.schemas.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flight_server ./flight_server
COPY clients ./clients
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin chrono
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
WORKDIR /app
# Flight listens on all interfaces in a container, which the server allows only with
# authentication on: set FLIGHT_AUTH__JWT_SECRET (or a public key) when running it.
ENV FLIGHT_HOST=0.0.0.0 \
    FLIGHT_PORT=8815 \
    FLIGHT_HEALTH_PORT=8816 \
    FLIGHT_METRICS_PORT=9464 \
    FLIGHT_DATA_DIR=/data \
    FLIGHT_LOG_FORMAT=json
RUN mkdir -p /data && chown chrono:chrono /data
USER chrono
VOLUME ["/data"]
# Flight (gRPC), gRPC health checking, Prometheus metrics
EXPOSE 8815 8816 9464
# SIGTERM drains (FLIGHT_DRAIN_TIMEOUT_S, 30 s): give `docker stop -t` more than that
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["flight-server", "health-check"]
ENTRYPOINT ["flight-server"]
CMD ["serve", "--demo"]
