"""What the Flight SQL service needs of the server's parts.

The composition root (`flight_server.app.App`) satisfies `FlightSqlDeps` structurally,
so nothing in this package imports it. The members are read-only: the service looks
its parts up, it never replaces them.
"""

from __future__ import annotations

from typing import Protocol

from flight_server.catalog import Catalog
from flight_server.context import RunningQueries
from flight_server.engines.duckdb import DuckDBEngine
from flight_server.engines.postgres import PostgresEngine
from flight_server.executor import QueryExecutor
from flight_server.ingest.datasets import DatasetRegistry
from flight_server.ingest.service import IngestService
from flight_server.security.access import AccessPolicy
from flight_server.security.limits import Limiter
from flight_server.settings import Settings


class FlightSqlDeps(Protocol):
    """The parts the Flight SQL commands, metadata queries and bulk ingest use."""

    @property
    def settings(self) -> Settings: ...

    @property
    def version(self) -> str: ...

    @property
    def executor(self) -> QueryExecutor: ...

    @property
    def running(self) -> RunningQueries: ...

    @property
    def limits(self) -> Limiter: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def access(self) -> AccessPolicy: ...

    @property
    def datasets(self) -> DatasetRegistry: ...

    @property
    def ingest(self) -> IngestService: ...

    @property
    def duckdb(self) -> DuckDBEngine: ...

    @property
    def postgres(self) -> PostgresEngine | None: ...
