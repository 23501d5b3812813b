"""The Flight SQL actions (DoAction), listed by ListActions beside the JSON ones.

Bodies and results are protobuf: `Any`-wrapped for the Flight SQL actions, plain for
the Flight `CancelFlightInfo` and `CloseSession` actions, as the specifications say.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow.flight as flight

from flight_server.context import RequestContext
from flight_server.errors import InvalidArgument, Unimplemented
from flight_server.flightsql import flight_cancel_pb2 as cancel_pb
from flight_server.flightsql import flight_session_pb2 as session_pb
from flight_server.flightsql import flight_sql_pb2 as sql
from flight_server.flightsql.protocol import pack, parse_plain, unpack_body
from flight_server.flightsql.service import READ_ONLY, FlightSqlService

Handler = Callable[[FlightSqlService, RequestContext, bytes], list[bytes]]


def _flight_info(raw: bytes) -> flight.FlightInfo:
    try:
        return flight.FlightInfo.deserialize(raw)
    except Exception:  # noqa: BLE001 - any undecodable body is the client's error
        raise InvalidArgument("the cancel request must hold the FlightInfo of the query") from None


def cancel_flight_info(service: FlightSqlService, ctx: RequestContext, body: bytes) -> list[bytes]:
    request = parse_plain(body, cancel_pb.CancelFlightInfoRequest)
    found = service.cancel(_flight_info(request.info), ctx)
    status = cancel_pb.CANCEL_STATUS_CANCELLED if found else cancel_pb.CANCEL_STATUS_NOT_CANCELLABLE
    return [cancel_pb.CancelFlightInfoResult(status=status).SerializeToString()]


def cancel_query(service: FlightSqlService, ctx: RequestContext, body: bytes) -> list[bytes]:
    request = unpack_body(body, sql.ActionCancelQueryRequest)
    found = service.cancel(_flight_info(request.info), ctx)
    result = sql.ActionCancelQueryResult.CancelResult
    status = result.CANCEL_RESULT_CANCELLED if found else result.CANCEL_RESULT_NOT_CANCELLABLE
    return [pack(sql.ActionCancelQueryResult(result=status))]


def close_session(service: FlightSqlService, ctx: RequestContext, body: bytes) -> list[bytes]:
    """CLOSED: the server keeps nothing per session to close.

    Drivers send this on disconnect. Prepared statements belong to the caller, not to
    a connection (another connection of the same caller may still use them), and
    close on their own when idle; everything else is per call.
    """
    parse_plain(body, session_pb.CloseSessionRequest)
    closed = session_pb.CloseSessionResult(status=session_pb.CloseSessionResult.CLOSED)
    return [closed.SerializeToString()]


def _transactions(service: FlightSqlService, ctx: RequestContext, body: bytes) -> list[bytes]:
    raise InvalidArgument("transactions are not supported: " + READ_ONLY)


def _substrait(service: FlightSqlService, ctx: RequestContext, body: bytes) -> list[bytes]:
    raise Unimplemented("Substrait plans are not supported; prepare SQL (CreatePreparedStatement)")


SQL_ACTIONS: dict[str, tuple[str, Handler]] = {
    "CreatePreparedStatement": (
        "Flight SQL: prepare a query; returns a handle and the result and parameter schemas.",
        lambda s, c, b: s.create_prepared(b, c),
    ),
    "ClosePreparedStatement": (
        "Flight SQL: close a prepared statement handle.",
        lambda s, c, b: s.close_prepared(b, c),
    ),
    "CancelFlightInfo": ("Flight: stop the query of a FlightInfo (CancelFlightInfoRequest).", cancel_flight_info),
    "CancelQuery": ("Flight SQL (deprecated): stop the query of a FlightInfo.", cancel_query),
    "CloseSession": ("Flight: end the client's session (sent by drivers on disconnect); always CLOSED.", close_session),
    "BeginTransaction": ("Flight SQL: refused, the server is read-only for statements.", _transactions),
    "EndTransaction": ("Flight SQL: refused, the server is read-only for statements.", _transactions),
    "BeginSavepoint": ("Flight SQL: refused, the server is read-only for statements.", _transactions),
    "EndSavepoint": ("Flight SQL: refused, the server is read-only for statements.", _transactions),
    "CreatePreparedSubstraitPlan": ("Flight SQL: refused, Substrait is not supported.", _substrait),
}
