"""Configuration: one `Settings` object, built once at start-up and passed in.

Environment variables use the prefix `FLIGHT_` and `__` between nested groups, for
example `FLIGHT_DUCKDB__THREADS=4`. Nothing else in the package reads the environment.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import psutil
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def packaged_schemas() -> Path:
    """The table DDL and catalogue shipped inside the package (`flight_server.schemas`).

    The repository's top-level `schemas/` folder is mapped to that package (see
    pyproject.toml), so a wheel carries its own copy and an editable install reads the
    folder itself; the working directory never matters.
    """
    return Path(str(importlib.resources.files("flight_server.schemas")))


def _default_memory_limit() -> str:
    """70% of the machine's memory, as the architecture document sizes DuckDB."""
    return f"{int(psutil.virtual_memory().total * 0.7) // (1024 * 1024)}MB"


class DuckDBSettings(BaseModel):
    database: str = Field("analytics.duckdb", description="DuckDB database file, relative to the data directory")
    threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="worker threads of DuckDB (default: all cores)",
    )
    memory_limit: str = Field(
        default_factory=_default_memory_limit,
        description="DuckDB memory limit (default: 70% of system memory)",
    )
    temp_directory: str = Field("tmp", description="spill directory for DuckDB, relative to the data directory")
    max_temp_directory_size: str = Field("20GB", description="most disk DuckDB may spill to")
    query_deadline_s: float = Field(
        60.0, gt=0, description="seconds a query may run before it is interrupted (TIMED_OUT)"
    )
    batch_rows: int = Field(131_072, ge=1024, description="rows per Arrow record batch streamed to clients")


class PostgresSettings(BaseModel):
    uri: str | None = Field(
        None,
        description="PostgreSQL URI of the schema owner, e.g. postgresql://postgres@127.0.0.1:5432/chrono; "
        "unset = no PostgreSQL",
    )
    reader_uri: str | None = Field(
        None, description="URI of the SELECT-only login role that user queries run as (default: uri)"
    )
    pool_size: int = Field(8, ge=1, description="most connections open to PostgreSQL")
    pool_timeout_s: float = Field(5.0, gt=0, description="seconds a query waits for a free connection")
    connect_timeout_s: float = Field(2.0, gt=0, description="seconds to wait for a new connection")
    breaker_failures: int = Field(3, ge=1, description="failures in a row that open PostgreSQL's circuit breaker")
    breaker_open_s: float = Field(2.0, gt=0, description="seconds PostgreSQL is skipped once its breaker opens")
    apply_schema: bool = Field(True, description="apply schemas/postgres.sql at start-up (idempotent)")
    setup_retry_s: float = Field(
        5.0, gt=0, description="seconds between attempts to set up a PostgreSQL that was unreachable at start-up"
    )


class CacheSettings(BaseModel):
    l1_ttl_s: float = Field(300.0, ge=0, description="seconds an in-memory (L1) result lives at most")
    l1_max_entries: int = Field(500, ge=0, description="most results held in memory (L1); 0 turns L1 off")
    l1_max_bytes: int = Field(512 * 1024 * 1024, ge=0, description="most Arrow bytes held in memory (L1)")
    max_entry_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="larger results are not cached and stream straight through"
    )
    warm_top_n: int = Field(
        8, ge=0, description="most used named queries re-run after start-up and invalidation; 0 = off"
    )
    warm_concurrency: int = Field(1, ge=1, description="warming queries run at once")
    hit_ratio_warning: float = Field(
        0.7, ge=0, le=1, description="health warns when the hit ratio is under this (after 100 lookups)"
    )


class RedisSettings(BaseModel):
    url: str | None = Field(None, description="Redis URL of the shared L2 cache; unset = L1 only")

    @field_validator("url")
    @classmethod
    def _url_has_a_scheme(cls, url: str | None) -> str | None:
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a Redis URL such as redis://127.0.0.1:6379/0 (redis://, rediss:// or unix://)")
        return url

    ttl_s: float = Field(1800.0, gt=0, description="seconds an L2 entry lives")
    compression: str = Field("zstd", description="Arrow IPC buffer compression of L2 entries: none, lz4 or zstd")
    socket_timeout_s: float = Field(0.25, gt=0, description="Redis socket timeout; bounds the cost of a fault")
    breaker_failures: int = Field(3, ge=1, description="Redis failures in a row that open its circuit breaker")
    breaker_open_s: float = Field(5.0, gt=0, description="seconds Redis is skipped once its breaker opens")
    key_prefix: str = Field("chrono:", description="prefix of every Redis key this server writes")


class IngestSettings(BaseModel):
    allow_new_datasets: bool = Field(True, description="DoPut may create datasets beyond the known three")
    max_put_bytes: int = Field(
        4 * 1024**3, ge=1, description="most Arrow bytes one DoPut may send (RESOURCE_EXHAUSTED past it)"
    )
    max_put_rows: int = Field(100_000_000, ge=1, description="most rows one DoPut may send")
    max_columns: int = Field(256, ge=1, description="most columns a dataset may have (each field of a struct counts)")
    max_nesting_depth: int = Field(4, ge=1, description="deepest nesting of list and struct types")
    zstd_level: int = Field(3, ge=1, le=22, description="ZSTD level of ingested Parquet files")
    row_group_rows: int = Field(1_000_000, ge=1024, description="rows per Parquet row group")
    buffer_bytes: int = Field(
        256 * 1024 * 1024, ge=1024 * 1024, description="most Arrow memory one put holds before it spills to disk"
    )


class AuthSettings(BaseModel):
    jwt_secret: str | None = Field(None, description="HS256 secret; auth is on when a secret or a public key is set")
    jwt_public_key_file: Path | None = Field(None, description="PEM public key for RS256/ES256 tokens")
    algorithms: list[str] = Field(
        ["RS256", "ES256"], description="algorithms accepted with the public key (HS256 only with the secret)"
    )
    audience: str = Field("chrono-flight", description="required `aud` claim")
    issuer: str | None = Field(None, description="required `iss` claim, when set")
    leeway_s: float = Field(30.0, ge=0, description="clock skew allowed on exp, nbf and iat")
    issued_token_ttl_s: float = Field(3600.0, gt=0, description="lifetime of tokens issued by the basic-auth login")
    users_file: Path | None = Field(
        None,
        description="JSON list of basic-auth users {username, password_hash, role, projects} (besides the users table)",
    )
    login_failures_per_user: int = Field(
        5, ge=1, description="failed basic-auth sign-ins a username may have within the login window; then refused"
    )
    login_failures_per_peer: int = Field(
        20, ge=1, description="failed basic-auth sign-ins a client address may have within the login window"
    )
    login_window_s: float = Field(
        300.0, gt=0, description="seconds a failed basic-auth sign-in counts against its username and address"
    )

    @property
    def enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key_file)


class LimitSettings(BaseModel):
    rate_per_s: float = Field(100.0, ge=0, description="requests per second per caller (token bucket; 0 = no limit)")
    burst: float = Field(200.0, ge=1, description="requests a caller may send at once before the rate applies")
    max_concurrent_per_caller: int = Field(
        4, ge=1, description="queries one caller may run at once, admins included (without auth: per connection)"
    )
    max_concurrent_total: int = Field(16, ge=1, description="queries the server runs at once")
    queue_timeout_s: float = Field(5.0, ge=0, description="seconds a query waits for a slot before RESOURCE_EXHAUSTED")
    stall_timeout_s: float = Field(
        60.0, gt=0, description="seconds a stream may wait on a client that stopped reading before it is ended"
    )
    max_result_rows: int = Field(10_000_000, ge=1, description="most rows of one result for non-admins")
    max_result_bytes: int = Field(2 * 1024**3, ge=1, description="most Arrow bytes of one result for non-admins")
    max_generated_length: int = Field(
        10_000_000,
        ge=1,
        description="longest string or list that repeat, lpad, rpad, range, generate_series and similar functions "
        "may build from constant arguments (they are built while the query is planned, out of the deadline's reach)",
    )
    deadlines_s: dict[str, float] = Field(
        {"viewer": 30.0, "service": 60.0, "analyst": 300.0},
        description="query deadline per role (never above FLIGHT_DUCKDB__QUERY_DEADLINE_S)",
    )


class FlightSqlSettings(BaseModel):
    prepared_idle_s: float = Field(
        600.0, gt=0, description="seconds a Flight SQL prepared statement lives unused before it is closed"
    )
    max_prepared_per_caller: int = Field(64, ge=1, description="most prepared statements one caller may hold open")
    max_prepared: int = Field(4096, ge=1, description="most prepared statements the server holds open")
    max_bind_rows: int = Field(
        1000, ge=1, description="most parameter rows one bind may send (each row runs the statement once)"
    )


class TLSSettings(BaseModel):
    cert_file: Path | None = Field(None, description="PEM certificate of the Flight port; TLS is on when set")
    key_file: Path | None = Field(None, description="PEM private key of that certificate")
    client_ca_file: Path | None = Field(None, description="mutual TLS: CA that client certificates must chain to")


class SyncSettings(BaseModel):
    enabled: bool = Field(True, description="keep DuckDB replicas of the OLTP tables (when PostgreSQL is configured)")
    tables: list[str] = Field(
        ["projects", "domains", "scrape_pages", "project_pages", "users", "audit_logs"],
        description="OLTP tables replicated into DuckDB (without their secret columns)",
    )
    poll_interval_s: float = Field(0.2, gt=0, description="seconds between looks for new changes")
    batch_keys: int = Field(10_000, ge=1, description="most changed rows applied in one DuckDB transaction")
    max_staleness_s: float = Field(
        5.0, ge=0, description="default staleness a replica may have to answer a query (0 = never use replicas)"
    )
    backoff_initial_s: float = Field(0.5, gt=0, description="first wait after a failed sync cycle; doubles per failure")
    backoff_max_s: float = Field(30.0, gt=0, description="longest wait between retries of a failing sync")
    validate_interval_s: float = Field(
        3600.0, ge=0, description="seconds between automatic consistency checks with repair (0 = on demand only)"
    )
    validate_ranges: int = Field(64, ge=1, description="key ranges per table that validation compares")
    retention_s: float = Field(
        86400.0, gt=0, description="captured changes kept for a consumer that stopped reading them"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLIGHT_", env_nested_delimiter="__", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="bind address of the Flight server")
    port: int = Field(8815, ge=0, le=65535, description="Flight port (0 picks a free port)")
    data_dir: Path = Field(Path("./data"), description="DuckDB file, Parquet datasets and spill directory")
    schemas_dir: Path = Field(
        default_factory=packaged_schemas,
        description="folder of table DDL and the named-query catalogue (default: the copy shipped in the package)",
    )
    log_level: str = Field("INFO", description="log level: DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field("json", description="log format: json (one object a line) or text")
    health_port: int = Field(
        8816, ge=0, le=65535, description="gRPC health checking port (grpc.health.v1; 0 picks a free port)"
    )
    health_interval_s: float = Field(5.0, gt=0, description="seconds between background health checks")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus metrics port (0 picks a free port)")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM/SIGINT, seconds calls in flight get to finish before they are cancelled"
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        description="most bytes of one Flight message the server sends: result batches are cut (zero-copy) "
        "to fit; only a single row larger than that travels alone in a bigger message",
    )
    duckdb: DuckDBSettings = Field(default_factory=DuckDBSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tls: TLSSettings = Field(default_factory=TLSSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    flightsql: FlightSqlSettings = Field(default_factory=FlightSqlSettings)

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / self.duckdb.database

    @property
    def spill_dir(self) -> Path:
        return self.data_dir / self.duckdb.temp_directory

    @property
    def datasets_dir(self) -> Path:
        """Where ingested Parquet datasets live: one folder per dataset."""
        return self.data_dir / "datasets"


def settings_fields() -> dict[str, str]:
    """Every environment variable this server reads, with its description."""
    out: dict[str, str] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name.upper()}__")
            else:
                out[f"{prefix}{name.upper()}"] = field.description or ""

    walk(Settings, "FLIGHT_")
    return out
