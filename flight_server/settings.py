"""Configuration: one `Settings` object, built once at start-up and passed in.

Environment variables use the prefix `FLIGHT_` and `__` between nested groups, for
example `FLIGHT_DUCKDB__THREADS=4`. Nothing else in the package reads the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_memory_limit() -> str:
    """70% of the machine's memory, as the architecture document sizes DuckDB."""
    return f"{int(psutil.virtual_memory().total * 0.7) // (1024 * 1024)}MB"


class DuckDBSettings(BaseModel):
    database: str = Field(
        "analytics.duckdb", description="DuckDB database file, relative to the data directory"
    )
    threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="worker threads of DuckDB (default: all cores)",
    )
    memory_limit: str = Field(
        default_factory=_default_memory_limit,
        description="DuckDB memory limit (default: 70% of system memory)",
    )
    temp_directory: str = Field(
        "tmp", description="spill directory for DuckDB, relative to the data directory"
    )
    max_temp_directory_size: str = Field("20GB", description="most disk DuckDB may spill to")
    query_deadline_s: float = Field(
        60.0, gt=0, description="seconds a query may run before it is interrupted (TIMED_OUT)"
    )
    batch_rows: int = Field(131_072, ge=1024, description="rows per Arrow record batch streamed to clients")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLIGHT_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    host: str = Field("127.0.0.1", description="bind address of the Flight server")
    port: int = Field(8815, ge=0, le=65535, description="Flight port (0 picks a free port)")
    data_dir: Path = Field(Path("./data"), description="DuckDB file, Parquet datasets and spill directory")
    schemas_dir: Path = Field(PROJECT_ROOT / "schemas", description="table DDL and the named-query catalogue")
    log_level: str = Field("INFO", description="log level: DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field("json", description="log format: json (one object a line) or text")
    duckdb: DuckDBSettings = Field(default_factory=DuckDBSettings)  # type: ignore[arg-type]

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / self.duckdb.database

    @property
    def spill_dir(self) -> Path:
        return self.data_dir / self.duckdb.temp_directory


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
