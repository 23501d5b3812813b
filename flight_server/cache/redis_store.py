"""L2: results in Redis as Arrow IPC streams, shared by every server instance.

Values are `MAGIC | payload length | CRC32 | IPC stream` so a truncated or corrupt
entry is detected and dropped instead of being served. Every Redis call goes through
a circuit breaker with a short socket timeout and no retries: a Redis fault costs a
query at most one timeout, then Redis is skipped until the breaker lets a probe by.
Redis also holds the data-version counters and the usage counts used for warming.
"""

from __future__ import annotations

import logging
import secrets
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pyarrow as pa
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flight_server.engines.breaker import CircuitBreaker
from flight_server.settings import RedisSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAGIC = b"CFL2"
_HEADER = struct.Struct(">4sQI")  # magic, payload length, crc32
COMPRESSIONS = ("none", "lz4", "zstd")
EPOCH = "epoch"  # in every version map: which life of the counters the versions belong to


def new_epoch() -> int:
    """An epoch no earlier one equals: the time in milliseconds, then three random digits."""
    return int(time.time() * 1000) * 1000 + secrets.randbelow(1000)


class CorruptEntry(ValueError):
    pass


def encode_table(table: pa.Table, compression: str = "lz4") -> bytes:
    """A table as one Redis value: header, then the Arrow IPC stream."""
    codec = None if compression == "none" else compression
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=codec)) as writer:
        writer.write_table(table)
    payload = sink.getvalue()
    header = _HEADER.pack(MAGIC, payload.size, zlib.crc32(payload))
    return bytes(header + payload.to_pybytes())


def decode_table(value: bytes) -> pa.Table:
    """The table in a Redis value; CorruptEntry when it is truncated or damaged."""
    if len(value) < _HEADER.size:
        raise CorruptEntry("entry shorter than its header")
    magic, length, crc = _HEADER.unpack_from(value)
    payload = memoryview(value)[_HEADER.size :]
    if magic != MAGIC or len(payload) != length:
        raise CorruptEntry("bad magic or truncated entry")
    if zlib.crc32(payload) != crc:
        raise CorruptEntry("checksum mismatch")
    try:
        return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptEntry(f"unreadable IPC stream: {exc}") from None


class RedisStore:
    """The Redis side of the cache, every call guarded by a circuit breaker."""

    def __init__(self, settings: RedisSettings) -> None:
        if settings.compression not in COMPRESSIONS:
            raise ValueError(f"FLIGHT_REDIS__COMPRESSION must be one of {COMPRESSIONS}")
        assert settings.url is not None
        self.settings = settings
        self._prefix = settings.key_prefix
        self._versions_key = f"{settings.key_prefix}versions"
        self._client = redis.Redis.from_url(
            settings.url,
            socket_timeout=settings.socket_timeout_s,
            socket_connect_timeout=settings.socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.breaker = CircuitBreaker("redis", settings.breaker_failures, settings.breaker_open_s)
        self.errors = 0
        self.skipped = 0
        self.corrupt = 0
        self.bytes_written = 0
        self.bytes_read = 0
        self._last_warning = 0.0

    def _call(self, operation: str, fn: Callable[[], T], default: T) -> T:
        if not self.breaker.allow():
            self.skipped += 1
            return default
        try:
            result = fn()
        except (redis.RedisError, OSError) as exc:
            self.breaker.failure()
            self.errors += 1
            now = time.monotonic()
            if now - self._last_warning > 5:  # one warning per 5 s, not one per query
                self._last_warning = now
                logger.warning(
                    "redis %s failed; answering without L2",
                    operation,
                    extra={"fields": {"error": str(exc).splitlines()[0][:200], "breaker": self.breaker.state}},
                )
            return default
        self.breaker.success()
        return result

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    # -- results ---------------------------------------------------------------------------

    def get_table(self, key: str) -> pa.Table | None:
        value = self._call("get", lambda: self._client.get(self._key("result", key)), None)
        if not isinstance(value, bytes):
            return None
        try:
            table = decode_table(value)
        except CorruptEntry as exc:
            self.corrupt += 1
            logger.warning("dropping a damaged L2 entry", extra={"fields": {"error": str(exc)}})
            self._call("delete", lambda: self._client.delete(self._key("result", key)), None)
            return None
        self.bytes_read += len(value)
        return table

    def has_table(self, key: str) -> bool:
        return bool(self._call("exists", lambda: self._client.exists(self._key("result", key)), 0))

    def put_table(self, key: str, table: pa.Table, ttl_s: float) -> bool:
        value = encode_table(table, self.settings.compression)
        ttl_ms = max(1, int(min(ttl_s, self.settings.ttl_s) * 1000))
        stored = self._call("set", lambda: self._client.set(self._key("result", key), value, px=ttl_ms), None)
        if stored:
            self.bytes_written += len(value)
        return bool(stored)

    # -- data versions and usage -------------------------------------------------------

    def versions(self, names: list[str]) -> dict[str, int] | None:
        """The epoch and the counters of `names` (0 when never bumped); None when Redis is unavailable."""
        fields = [EPOCH, *names]
        values = self._call("hmget", lambda: list(self._client.hmget(self._versions_key, fields)), None)
        if values is not None and values[0] is None:
            values = self._call("hsetnx", lambda: self._start_epoch(fields), None)
        if values is None:
            return None
        epoch, *counters = values
        if epoch is None:  # cannot happen: the epoch was set in the same transaction
            return None
        return {EPOCH: int(epoch), **{n: int(v) if v is not None else 0 for n, v in zip(names, counters, strict=True)}}

    def _start_epoch(self, fields: list[str]) -> list[Any]:
        """Set a new epoch unless another server just did; the fields as they are then."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hsetnx(self._versions_key, EPOCH, new_epoch())
        pipe.hmget(self._versions_key, fields)
        return list(pipe.execute()[1])

    def bump(self, names: Iterable[str]) -> dict[str, int] | None:
        names = list(names)

        def incr_all() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.hincrby(self._versions_key, name, 1)
            return list(pipe.execute())

        values = self._call("hincrby", incr_all, None)
        return None if values is None else {n: int(v) for n, v in zip(names, values, strict=True)}

    def count_use(self, member: str) -> None:
        self._call("zincrby", lambda: self._client.zincrby(self._key("usage", "named"), 1, member), None)

    def top_used(self, n: int) -> list[str] | None:
        raw = self._call("zrevrange", lambda: self._client.zrevrange(self._key("usage", "named"), 0, n - 1), None)
        return None if raw is None else [m.decode() if isinstance(m, bytes) else str(m) for m in raw]

    def ping(self) -> bool:
        return bool(self._call("ping", self._client.ping, False))

    def stats(self) -> dict[str, Any]:
        return {
            "url": _redact(self.settings.url or ""),
            "breaker": self.breaker.snapshot(),
            "errors": self.errors,
            "skipped_while_open": self.skipped,
            "corrupt_entries": self.corrupt,
            "bytes_written": self.bytes_written,
            "bytes_read": self.bytes_read,
            "compression": self.settings.compression,
        }

    def close(self) -> None:
        self._client.close()


def _redact(url: str) -> str:
    """A Redis URL without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
