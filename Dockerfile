# Chrono Flight server image: build wheels in one stage, run as a non-root user in another.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flight_server ./flight_server
COPY clients ./clients
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 chrono
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY schemas ./schemas
ENV FLIGHT_HOST=0.0.0.0 \
    FLIGHT_PORT=8815 \
    FLIGHT_DATA_DIR=/data \
    FLIGHT_SCHEMAS_DIR=/app/schemas \
    FLIGHT_LOG_FORMAT=json
RUN mkdir -p /data && chown chrono /data
USER chrono
VOLUME ["/data"]
EXPOSE 8815
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
    CMD python -c "import pyarrow.flight as f; list(f.connect('grpc://127.0.0.1:8815').do_action(f.Action('health', b'')))"
ENTRYPOINT ["flight-server"]
CMD ["serve", "--demo"]
