"""Shared fixtures: a real Flight server on port 0 over real DuckDB with demo data.

Fixtures only; the helpers they use live in the `support` package.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flight_server.settings import CacheSettings, SyncSettings

from support.servers import (
    DEMO_ROWS,
    ServerHandle,
    create_database,
    drop_database,
    pg_settings,
    start_server,
    stop_server,
)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = create_database()
    yield name
    drop_database(name)


@pytest.fixture(scope="session")
def hybrid_server(tmp_path_factory: pytest.TempPathFactory, pg_database: str) -> Iterator[ServerHandle]:
    """DuckDB and PostgreSQL with matching demo data (50,000 CDX rows).

    No replicas here, so that PostgreSQL and hybrid routes are what is tested;
    test_sync.py and test_replicas.py run servers with them.
    """
    handle = start_server(
        tmp_path_factory.mktemp("hybrid"),
        rows=50_000,
        cache=CacheSettings(warm_top_n=0),
        postgres=pg_settings(pg_database),
        sync=SyncSettings(enabled=False),
    )
    yield handle
    stop_server(handle)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """The shared server: demo data with 200,000 CDX rows, default settings but warming."""
    # no background warming here: tests assert exact cache statuses
    handle = start_server(tmp_path_factory.mktemp("data"), rows=DEMO_ROWS, cache=CacheSettings(warm_top_n=0))
    yield handle
    stop_server(handle)
