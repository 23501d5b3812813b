"""The result-cache seam around execution.

The executor asks the cache before it runs a query and offers it the result after.
A key covers everything that decides a result: the final SQL, the bound parameters,
the engine, the caller's data scope and the data version of every table read.
`NoResultCache` is the cache of a server without one: every lookup is a bypass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa


@dataclass(frozen=True)
class CacheKey:
    digest: str
    tables: tuple[str, ...]
    ttl_s: int


def cache_key(
    sql: str,
    params: Any,
    engine: str,
    scope: str,
    versions: Mapping[str, int],
    tables: Iterable[str],
    ttl_s: int,
) -> CacheKey:
    tables = tuple(sorted(tables))
    material = json.dumps(
        {
            "sql": sql,
            "params": params,
            "engine": engine,
            "scope": scope,
            "versions": {t: versions.get(t, 0) for t in tables},
        },
        sort_keys=True,
        default=str,
    )
    return CacheKey(hashlib.sha256(material.encode()).hexdigest(), tables, ttl_s)


class ResultCache(Protocol):
    def versions(self, tables: Iterable[str]) -> dict[str, int]:
        """The current data version of each table."""
        ...

    def lookup(self, key: CacheKey, mode: str) -> tuple[pa.Table | None, str]:
        """A cached table (or None) and the cache status to report."""
        ...

    def store(self, key: CacheKey, table: pa.Table) -> None: ...

    def bump(self, tables: Iterable[str]) -> None:
        """New data in these tables: every cached result that read them is stale."""
        ...

    def stats(self) -> dict[str, Any]: ...


class NoResultCache:
    """No caching: every query runs on its engine and reports `bypass`."""

    def versions(self, tables: Iterable[str]) -> dict[str, int]:
        return {}

    def lookup(self, key: CacheKey, mode: str) -> tuple[pa.Table | None, str]:
        return None, "bypass"

    def store(self, key: CacheKey, table: pa.Table) -> None:
        return None

    def bump(self, tables: Iterable[str]) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"enabled": False}
