"""One exception tree for the whole server, each class naming its Flight status.

Code below the RPC boundary raises these; `to_flight_error` turns any exception into
the Flight error the client sees: a one-line message, never a stack trace or a path.
"""

from __future__ import annotations

import logging
import re

import pyarrow.flight as flight

logger = logging.getLogger(__name__)


class ChronoError(Exception):
    """Root of every error the server raises on purpose."""

    status = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))

    @property
    def message(self) -> str:
        return str(self)


class InvalidArgument(ChronoError):
    status = "invalid_argument"


class NotFound(ChronoError):
    status = "not_found"


class Unauthenticated(ChronoError):
    status = "unauthenticated"


class PermissionDenied(ChronoError):
    status = "permission_denied"


class Unavailable(ChronoError):
    status = "unavailable"


class TimedOut(ChronoError):
    status = "timed_out"


class ResourceExhausted(ChronoError):
    status = "resource_exhausted"


class Cancelled(ChronoError):
    status = "cancelled"


class Unimplemented(ChronoError):
    status = "unimplemented"


class InternalError(ChronoError):
    status = "internal"


_FLIGHT_ERRORS: dict[str, type[BaseException]] = {
    "unauthenticated": flight.FlightUnauthenticatedError,
    "permission_denied": flight.FlightUnauthorizedError,
    "unavailable": flight.FlightUnavailableError,
    "timed_out": flight.FlightTimedOutError,
    "cancelled": flight.FlightCancelledError,
    "internal": flight.FlightInternalError,
}

_PATH = re.compile(r"(?:/[\w.\-=+%~@]+){2,}")  # hive partition directories carry "="


def one_line(message: str, limit: int = 400) -> str:
    """The first line of a message, with file paths masked and length bounded."""
    line = message.strip().splitlines()[0] if message.strip() else "error"
    line = _PATH.sub("<path>", line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


class _InvalidArgumentStatus(ValueError):
    """pyarrow sends a ValueError as INVALID_ARGUMENT."""


class _NotFoundStatus(KeyError):
    """pyarrow sends a KeyError as NOT_FOUND; this one keeps the message unquoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _UnimplementedStatus(NotImplementedError):
    """pyarrow sends a NotImplementedError as UNIMPLEMENTED."""


# pyarrow appends "Python exception: <type>: <message>" to the status; plain type
# names keep that suffix free of internal module paths.
for _wire, _name in (
    (_InvalidArgumentStatus, "InvalidArgument"),
    (_NotFoundStatus, "NotFound"),
    (_UnimplementedStatus, "Unimplemented"),
):
    _wire.__module__, _wire.__qualname__, _wire.__name__ = "builtins", _name, _name


def to_flight_error(exc: BaseException) -> BaseException:
    """The exception to raise at the RPC boundary for `exc`, logging internal detail.

    pyarrow maps its Flight exception classes to gRPC codes. INVALID_ARGUMENT and
    NOT_FOUND have no Flight class: pyarrow maps ValueError and KeyError to them.
    RESOURCE_EXHAUSTED has no mapping in pyarrow at all, so it travels as a Flight
    server error whose message starts with the status name.
    """
    if isinstance(exc, flight.FlightError):
        return exc  # type: ignore[no-any-return]
    if isinstance(exc, ChronoError):
        if exc.status == "invalid_argument":
            return _InvalidArgumentStatus(exc.message)
        if exc.status == "not_found":
            return _NotFoundStatus(exc.message)
        if exc.status == "unimplemented":
            return _UnimplementedStatus(exc.message)
        if exc.status == "resource_exhausted":
            exhausted: BaseException = flight.FlightServerError(f"RESOURCE_EXHAUSTED: {exc.message}")
            return exhausted
        error: BaseException = _FLIGHT_ERRORS[exc.status](exc.message)
        return error
    logger.error("unexpected error at the RPC boundary", exc_info=exc)
    internal: BaseException = flight.FlightInternalError("internal error; the server logged the details")
    return internal
