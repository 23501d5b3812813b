"""A small typed client for the Chrono Flight analytics server.

    from chrono_flight_client import ChronoFlightClient, Options

    with ChronoFlightClient.connect("grpc://127.0.0.1:8815") as client:
        top = client.query("domains.top", limit=10)                     # pa.Table
        fresh = client.query("domains.top", cache="bypass", limit=10)
        n = client.sql("SELECT count(*) FROM cdx_records WHERE domain = $1", "example.com", cache="bypass")
        for batch in client.stream_sql("SELECT * FROM cdx_records"):  # pa.RecordBatch
            ...

Per-call options (`engine`, `cache`, `max_staleness_s`) are keyword arguments of every
call, named and raw SQL alike. Named-query parameters are the other keyword arguments:
the option names are reserved (the server's catalogue refuses parameters named so).
An `Options` value passed positionally right after the query name works too. Every
server error is raised as a `ChronoFlightError` subclass with `.status` and a clean
one-line `.message`; the pyarrow error is its cause.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

import pyarrow as pa
import pyarrow.flight as flight

__all__ = [
    "BatchStream",
    "Cancelled",
    "ChronoFlightClient",
    "ChronoFlightError",
    "InvalidArgument",
    "NotFound",
    "Options",
    "PermissionDenied",
    "QueryInfo",
    "ResourceExhausted",
    "ServerError",
    "TimedOut",
    "Unauthenticated",
    "Unavailable",
    "query_command",
    "sql_command",
]

DEFAULT_URL = "grpc://127.0.0.1:8815"
Engine = Literal["auto", "duckdb", "postgres"]
CacheMode = Literal["use", "bypass", "refresh"]
T = TypeVar("T")


# -- errors -------------------------------------------------------------------------------


class ChronoFlightError(Exception):
    """Root of every error this client raises; `.status` names the Flight status."""

    status = "unknown"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ChronoFlightError):
    status = "invalid_argument"


class NotFound(ChronoFlightError):
    status = "not_found"


class Unauthenticated(ChronoFlightError):
    status = "unauthenticated"


class PermissionDenied(ChronoFlightError):
    status = "permission_denied"


class Unavailable(ChronoFlightError):
    status = "unavailable"


class TimedOut(ChronoFlightError):
    status = "timed_out"


class ResourceExhausted(ChronoFlightError):
    status = "resource_exhausted"


class Cancelled(ChronoFlightError):
    status = "cancelled"


class ServerError(ChronoFlightError):
    status = "internal"


_ERROR_CLASSES: tuple[tuple[type[BaseException], type[ChronoFlightError]], ...] = (
    (flight.FlightUnauthenticatedError, Unauthenticated),
    (flight.FlightUnauthorizedError, PermissionDenied),
    (flight.FlightUnavailableError, Unavailable),
    (flight.FlightTimedOutError, TimedOut),
    (flight.FlightCancelledError, Cancelled),
    (pa.ArrowInvalid, InvalidArgument),
    (pa.ArrowKeyError, NotFound),
)
_TRANSPORT_SUFFIXES = (". Detail:", ". gRPC client debug context:", ". Client context:")
_FLIGHT_PREFIX = re.compile(r"^Flight returned [\w ]+ error, with message: ")
_EXHAUSTED = "RESOURCE_EXHAUSTED:"


def _clean_message(text: str) -> str:
    """The server's one-line message without the transport's added detail."""
    for marker in _TRANSPORT_SUFFIXES:
        text = text.split(marker, 1)[0]
    text = _FLIGHT_PREFIX.sub("", text.strip()).removeprefix(_EXHAUSTED).strip()
    lines = text.splitlines()
    return lines[0].strip() if lines else "error"


def _translate(exc: BaseException) -> ChronoFlightError:
    message = _clean_message(str(exc))
    if isinstance(exc, flight.FlightServerError) and _EXHAUSTED in str(exc).split(". Detail:", 1)[0]:
        return ResourceExhausted(message)
    kind = next((ours for theirs, ours in _ERROR_CLASSES if isinstance(exc, theirs)), ServerError)
    return kind(message)


@contextmanager
def _mapped_errors() -> Iterator[None]:
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise _translate(exc) from exc


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """Per-call options: engine hint, cache mode and accepted staleness of cached results."""

    engine: Engine | None = None
    cache: CacheMode | None = None
    max_staleness_s: float | None = None

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        for key in OPTION_NAMES:
            if getattr(self, key) is not None:
                command[key] = getattr(self, key)
        return command

    def merged(
        self, engine: Engine | None = None, cache: CacheMode | None = None, max_staleness_s: float | None = None
    ) -> Options:
        """These options with the ones given as keywords; the same option twice must agree."""
        given = {"engine": engine, "cache": cache, "max_staleness_s": max_staleness_s}
        for key, value in given.items():
            mine = getattr(self, key)
            if mine is not None and value is not None and mine != value:
                raise InvalidArgument(f"option '{key}' given twice ({mine!r} in Options, {value!r} as a keyword)")
        return Options(
            engine if engine is not None else self.engine,
            cache if cache is not None else self.cache,
            max_staleness_s if max_staleness_s is not None else self.max_staleness_s,
        )


OPTION_NAMES = ("engine", "cache", "max_staleness_s")  # never names of named-query parameters


def sql_command(query: str, *params: Any, options: Options | None = None) -> dict[str, Any]:
    """The JSON command for raw SQL with $1, $2, ... parameters."""
    command: dict[str, Any] = {"sql": query}
    if params:
        command["params"] = list(params)
    return (options or Options()).apply(command)


def query_command(
    name: str,
    options: Options | None = None,
    /,
    *,
    engine: Engine | None = None,
    cache: CacheMode | None = None,
    max_staleness_s: float | None = None,
    **params: Any,
) -> dict[str, Any]:
    """The JSON command for a named query, e.g. `query_command("domains.top", cache="bypass", limit=5)`."""
    command: dict[str, Any] = {"query": name}
    if params:
        command["params"] = params
    return (options or Options()).merged(engine, cache, max_staleness_s).apply(command)


def _encode(command: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(command), separators=(",", ":"), default=str).encode()


def _decode(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    data = raw.to_pybytes() if isinstance(raw, pa.Buffer) else bytes(raw)
    value = json.loads(data) if data else {}
    return cast(dict[str, Any], value) if isinstance(value, dict) else {"value": value}


@dataclass(frozen=True)
class QueryInfo:
    """What GetFlightInfo says about a command, without running it."""

    schema: pa.Schema
    engine: str | None
    reason: str | None
    cache: str | None
    query_id: str | None
    ticket: bytes = b""
    metadata: dict[str, Any] = field(default_factory=dict)


# -- streams -------------------------------------------------------------------------------


class BatchStream(Iterator[pa.RecordBatch]):
    """Record batches as they arrive over DoGet; `metadata` is the first batch's metadata."""

    def __init__(self, reader: Any, on_metadata: Callable[[dict[str, Any]], None]) -> None:
        self._reader = reader
        self._on_metadata = on_metadata
        self._done = False
        with _mapped_errors():
            self.schema: pa.Schema = reader.schema  # waits for the first message: errors surface now
        self.metadata: dict[str, Any] = {}
        self.truncated = False  # read_all(max_rows) stopped before the end: there may be more rows

    def __next__(self) -> pa.RecordBatch:
        while not self._done:
            try:
                with _mapped_errors():
                    chunk = self._reader.read_chunk()
            except StopIteration:
                self._done = True
                break
            except BaseException:
                self._done = True
                raise
            if chunk.app_metadata is not None and not self.metadata:
                self.metadata = _decode(chunk.app_metadata)
                self._on_metadata(self.metadata)
            if chunk.data is not None:
                return cast(pa.RecordBatch, chunk.data)
        raise StopIteration

    def read_all(self, max_rows: int | None = None) -> pa.Table:
        """The rest of the stream as one table; with `max_rows`, at most that many rows.

        With `max_rows` the stream is read only until that many rows have arrived, then
        closed, which cancels the server's side: the rest is never computed or sent.
        `truncated` then says whether the stream was stopped before its end.
        """
        if max_rows is None:
            return pa.Table.from_batches(list(self), schema=self.schema)
        if max_rows < 0:
            raise InvalidArgument("max_rows must be 0 or more")
        batches: list[pa.RecordBatch] = []
        rows = 0
        while rows < max_rows:
            batch = next(self, None)
            if batch is None:
                break
            batches.append(batch)
            rows += batch.num_rows
        self.truncated = not self._done
        self.close()
        return pa.Table.from_batches(batches, schema=self.schema).slice(0, max_rows)

    def close(self) -> None:
        """Stop reading; cancels the server side if the stream is not finished."""
        if not self._done:
            self._done = True
            self._reader.cancel()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_batches(data: Any, batch_rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and batches of a pyarrow, pandas or Polars value, for `ingest`."""
    module = type(data).__module__.split(".", 1)[0]
    if module == "polars":
        data = data.collect() if hasattr(data, "collect") else data
        data = data.to_arrow()
    elif module == "pandas":
        data = pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if isinstance(data, pa.Table):
        return data.schema, iter(data.to_batches(max_chunksize=batch_rows))
    if isinstance(data, pa.RecordBatchReader):
        return data.schema, iter(data)
    if hasattr(data, "__arrow_c_stream__"):
        reader = pa.RecordBatchReader.from_stream(data)
        return reader.schema, iter(reader)
    raise InvalidArgument(f"cannot ingest a {type(data).__name__}: send a pyarrow, pandas or Polars table")


# -- the client ----------------------------------------------------------------------------


class ChronoFlightClient:
    """A connection to one Chrono Flight server; safe to reuse for many calls."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float | None = None,
        tls_root_certs: bytes | None = None,
    ) -> None:
        if not url.startswith(("grpc://", "grpc+tcp://", "grpc+tls://", "grpc+unix://")):
            raise InvalidArgument(f"unsupported URL '{url}': use grpc://host:port or grpc+tls://host:port")
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        with _mapped_errors():
            kwargs: dict[str, Any] = {"tls_root_certs": tls_root_certs} if tls_root_certs else {}
            self._client = flight.FlightClient(url, **kwargs)
        self._options = flight.FlightCallOptions(headers=headers, timeout=timeout)
        self.url = url
        self._last_metadata: dict[str, Any] = {}

    @classmethod
    def connect(
        cls, url: str = DEFAULT_URL, token: str | None = None, *, timeout: float | None = None
    ) -> ChronoFlightClient:
        """Connect to `url` (grpc:// or grpc+tls://), sending `token` as a bearer token."""
        return cls(url, token, timeout=timeout)

    @property
    def last_metadata(self) -> dict[str, Any]:
        """The app_metadata (cache, query_id, ...) of the last stream's first batch."""
        return dict(self._last_metadata)

    def _call(self, fn: Callable[[], T]) -> T:
        with _mapped_errors():
            return fn()

    def _set_metadata(self, metadata: dict[str, Any]) -> None:
        self._last_metadata = metadata

    # -- results

    def stream(self, command: Mapping[str, Any]) -> BatchStream:
        """Run any JSON command with one DoGet round trip, as a stream of batches."""
        self._last_metadata = {}
        ticket = flight.Ticket(_encode(command))
        reader = self._call(lambda: self._client.do_get(ticket, options=self._options))
        return BatchStream(reader, self._set_metadata)

    def fetch(self, command: Mapping[str, Any], *, max_rows: int | None = None) -> pa.Table:
        """Run any JSON command and return the result as a table (its first `max_rows` rows)."""
        with self.stream(command) as batches:
            return batches.read_all(max_rows)

    def sql(
        self,
        query: str,
        *params: Any,
        engine: Engine | None = None,
        cache: CacheMode | None = None,
        max_staleness_s: float | None = None,
    ) -> pa.Table:
        """Raw read-only SQL with `$1, $2, ...` bound to `params`."""
        return self.fetch(sql_command(query, *params, options=Options(engine, cache, max_staleness_s)))

    def stream_sql(
        self,
        query: str,
        *params: Any,
        engine: Engine | None = None,
        cache: CacheMode | None = None,
        max_staleness_s: float | None = None,
    ) -> BatchStream:
        """Like `sql`, as an iterator of record batches read as they arrive."""
        return self.stream(sql_command(query, *params, options=Options(engine, cache, max_staleness_s)))

    def query(
        self,
        name: str,
        options: Options | None = None,
        /,
        *,
        engine: Engine | None = None,
        cache: CacheMode | None = None,
        max_staleness_s: float | None = None,
        **params: Any,
    ) -> pa.Table:
        """A named query: `query("domains.top", limit=5, cache="bypass")`; options as for `sql`."""
        command = query_command(name, options, engine=engine, cache=cache, max_staleness_s=max_staleness_s, **params)
        return self.fetch(command)

    def stream_query(
        self,
        name: str,
        options: Options | None = None,
        /,
        *,
        engine: Engine | None = None,
        cache: CacheMode | None = None,
        max_staleness_s: float | None = None,
        **params: Any,
    ) -> BatchStream:
        """Like `query`, as an iterator of record batches read as they arrive."""
        command = query_command(name, options, engine=engine, cache=cache, max_staleness_s=max_staleness_s, **params)
        return self.stream(command)

    # -- planning and metadata

    def info(self, command: Mapping[str, Any]) -> QueryInfo:
        """GetFlightInfo: schema and routing of a command (see `sql_command`, `query_command`)."""
        descriptor = flight.FlightDescriptor.for_command(_encode(command))
        raw = self._call(lambda: self._client.get_flight_info(descriptor, options=self._options))
        meta = _decode(raw.app_metadata)
        ticket = raw.endpoints[0].ticket.ticket if raw.endpoints else b""
        return QueryInfo(
            raw.schema, meta.get("engine"), meta.get("reason"), meta.get("cache"), meta.get("query_id"),
            ticket, meta,
        )  # fmt: skip

    def schema(self, command: Mapping[str, Any]) -> pa.Schema:
        """GetSchema: the result schema of a command, without running it."""
        descriptor = flight.FlightDescriptor.for_command(_encode(command))
        result = self._call(lambda: self._client.get_schema(descriptor, options=self._options))
        return cast(pa.Schema, result.schema)

    def _flights(self, kind: str) -> list[dict[str, Any]]:
        infos = self._call(lambda: list(self._client.list_flights(options=self._options)))
        entries = ({**_decode(info.app_metadata), "schema": info.schema} for info in infos)
        return [entry for entry in entries if entry.get("kind") == kind]

    def catalog(self) -> list[dict[str, Any]]:
        """Named queries: name, description, engine, ttl_s, tables, params, schema."""
        return self._flights("query")

    def datasets(self) -> list[dict[str, Any]]:
        """Datasets: name, engine, rows, schema."""
        return self._flights("dataset")

    def action(self, name: str, body: Mapping[str, Any] | None = None) -> Any:
        """DoAction with a JSON body; the decoded JSON of its (single) result."""
        act = flight.Action(name, _encode(body) if body is not None else b"")
        results = self._call(lambda: list(self._client.do_action(act, options=self._options)))
        return json.loads(results[0].body.to_pybytes()) if results else None

    def health(self) -> dict[str, Any]:
        """Server diagnostics: engines, active queries, cache, memory, warnings."""
        return cast(dict[str, Any], self.action("health"))

    def explain(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """Routing decision and final SQL (`sql`) of a command, without running it."""
        return cast(dict[str, Any], self.action("explain", command))

    # -- ingestion

    def ingest(self, dataset: str, data: Any, *, batch_rows: int = 65_536) -> dict[str, Any]:
        """DoPut `data` into `dataset`; the put result `{"rows": n, "files": [...], "bytes": n}`.

        `data` is a pyarrow Table, RecordBatch or RecordBatchReader (streamed as it is
        read), a pandas DataFrame or a Polars DataFrame or LazyFrame. The rows are
        queryable once this returns; when it raises, nothing of the put was stored.
        """
        schema, batches = _as_batches(data, batch_rows)
        descriptor = flight.FlightDescriptor.for_path(dataset)
        writer, acks = self._call(lambda: self._client.do_put(descriptor, schema, options=self._options))
        rows = 0
        try:
            # begin/commit markers: if this program dies midway, the server stores nothing
            with _mapped_errors():
                writer.write_metadata(pa.py_buffer(b'{"put":"begin"}'))
            for batch in batches:
                with _mapped_errors():
                    writer.write_batch(batch)
                rows += batch.num_rows
            with _mapped_errors():
                writer.write_metadata(pa.py_buffer(_encode({"put": "commit", "rows": rows})))
                writer.done_writing()
                ack = acks.read()
        except ChronoFlightError:
            with _mapped_errors():  # the server's own status comes with close(): raise that one
                writer.close()
            raise
        except BaseException:
            with suppress(Exception):  # reading the data failed: the server drops the put
                writer.write_metadata(pa.py_buffer(b'{"put":"abort"}'))
                writer.close()
            raise
        with _mapped_errors():
            writer.close()
        return _decode(ack)

    # -- lifecycle

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ChronoFlightClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
