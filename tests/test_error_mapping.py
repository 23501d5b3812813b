"""`to_flight_error`: each ChronoError subclass becomes the Flight error of its status, message kept."""

from __future__ import annotations

import logging

import pyarrow.flight as flight
import pytest

from flight_server.errors import (
    Cancelled,
    ChronoError,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TimedOut,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    to_flight_error,
)


@pytest.mark.parametrize(
    ("error", "flight_class", "reason"),
    [
        # pyarrow sends ValueError, KeyError and NotImplementedError as INVALID_ARGUMENT,
        # NOT_FOUND and UNIMPLEMENTED: there are no Flight classes for those statuses
        (InvalidArgument("bad limit"), ValueError, r"^bad limit$"),
        (NotFound("no query 'x'"), KeyError, r"^no query 'x'$"),
        (Unimplemented("no DoExchange here"), NotImplementedError, r"^no DoExchange here$"),
        (Unauthenticated("token expired"), flight.FlightUnauthenticatedError, r"^token expired"),
        (PermissionDenied("viewers run named queries only"), flight.FlightUnauthorizedError, r"^viewers run named"),
        (Unavailable("postgres is down"), flight.FlightUnavailableError, r"^postgres is down"),
        (TimedOut("query deadline of 1 s passed"), flight.FlightTimedOutError, r"^query deadline of 1 s passed"),
        (Cancelled("cancelled by the client"), flight.FlightCancelledError, r"^cancelled by the client"),
        (InternalError("replica is corrupt"), flight.FlightInternalError, r"^replica is corrupt"),
        # RESOURCE_EXHAUSTED has no pyarrow mapping: a server error that names the status
        (ResourceExhausted("rate limit"), flight.FlightServerError, r"^RESOURCE_EXHAUSTED: rate limit"),
    ],
)
def test_error_mapping_each_status_has_its_flight_error(
    error: ChronoError, flight_class: type[BaseException], reason: str
) -> None:
    mapped = to_flight_error(error)
    assert not isinstance(mapped, ChronoError)
    if issubclass(flight_class, flight.FlightError):
        assert type(mapped) is flight_class  # not a subclass: the exact gRPC status
    with pytest.raises(flight_class, match=reason):
        raise mapped


def test_error_mapping_covers_every_chrono_error_subclass() -> None:
    for cls in ChronoError.__subclasses__():
        mapped = to_flight_error(cls("x"))
        assert not isinstance(mapped, ChronoError), cls


def test_error_mapping_flight_errors_pass_through() -> None:
    error = flight.FlightUnavailableError("already a Flight error")
    assert to_flight_error(error) is error


def test_error_mapping_unexpected_error_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="flight_server.errors"):
        mapped = to_flight_error(RuntimeError("secret detail /srv/data"))
    with pytest.raises(flight.FlightInternalError, match=r"^internal error; the server logged the details") as info:
        raise mapped
    assert "secret detail" not in str(info.value)
    assert "unexpected error at the RPC boundary" in caplog.text
