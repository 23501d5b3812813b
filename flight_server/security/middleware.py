"""Security at the RPC boundary: who is calling, what they may do, and TLS.

`AuthMiddlewareFactory` runs before any handler, installed by the server under the
reserved key `AUTH_MIDDLEWARE` (no caller-supplied middleware can take its place): it
verifies the bearer token (or logs a basic-auth user in and hands back a bearer token
in the response headers) and refuses the call with UNAUTHENTICATED otherwise.

Fail closed: `caller_of` is the only way handlers learn the caller, and a call without
the auth middleware has no caller (UNAUTHENTICATED), never a default one. Full access
without credentials exists only when authentication is off, which `check_bind_address`
allows on loopback only.

Basic credentials on Handshake are checked at once (the token goes back in that
call's headers); on any other RPC they are checked when the handler asks for the
caller, where the client's address is known, so that failures count against it too.
pyarrow does not hand middleware or the Handshake handler the client's address, so
Handshake sign-ins are throttled per username only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import urllib.parse
from pathlib import Path
from typing import Any

import pyarrow.flight as flight

from flight_server.context import Caller
from flight_server.errors import ChronoError, PermissionDenied, Unauthenticated
from flight_server.security.auth import PERMISSIONS, Authenticator, Credentials
from flight_server.settings import Settings

logger = logging.getLogger(__name__)

AUTH_MIDDLEWARE, DRAIN_MIDDLEWARE = "auth", "drain"  # middleware keys reserved by the server
LOOPBACK_ADMIN = Caller(subject="anonymous", role="admin", projects=None)  # auth off: loopback only


class AuthMiddleware(flight.ServerMiddleware):  # type: ignore[misc]
    """The caller of one call, or the basic credentials to check once its address is known."""

    def __init__(
        self,
        caller: Caller | None = None,
        issued: str | None = None,
        basic: str | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._caller = caller
        self._issued = issued
        self._basic = basic
        self._auth = authenticator

    def sending_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._issued}"} if self._issued else {}

    def caller(self, context: flight.ServerCallContext) -> Caller:
        if self._caller is None:
            if self._basic is None or self._auth is None:
                raise Unauthenticated("missing authorization header: send 'Bearer <token>' or basic credentials")
            token = self._auth.login(self._basic, client_address(context.peer()))
            self._caller = self._auth.verify(token)
            context.add_header("authorization", f"Bearer {token}")
        return self._caller


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> AuthMiddleware:
        if not self._auth.enabled:
            return AuthMiddleware(LOOPBACK_ADMIN)
        values = headers.get("authorization") or headers.get("Authorization") or []
        try:
            if not values:
                raise Unauthenticated("missing authorization header: send 'Bearer <token>' or basic credentials")
            scheme, _, credentials = values[0].strip().partition(" ")
            if scheme.lower() == "bearer":
                return AuthMiddleware(self._auth.verify(credentials.strip()))
            if scheme.lower() == "basic":
                if info.method != flight.FlightMethod.HANDSHAKE:
                    return AuthMiddleware(basic=credentials.strip(), authenticator=self._auth)
                token = self._auth.login(credentials.strip())
                return AuthMiddleware(self._auth.verify(token), issued=token)
            raise Unauthenticated("authorization must be 'Bearer <token>' or 'Basic <credentials>'")
        except ChronoError as exc:
            logger.info("unauthenticated call", extra={"fields": {"method": str(info.method), "error": str(exc)}})
            raise flight.FlightUnauthenticatedError(str(exc)) from None


def server_middleware(
    authenticator: Authenticator,
    drain: flight.ServerMiddlewareFactory,
    extra: dict[str, flight.ServerMiddlewareFactory] | None = None,
) -> dict[str, flight.ServerMiddlewareFactory]:
    """The server's middleware: authentication first and always, `extra` next, the drain count last.

    Authentication cannot be dropped or replaced by passing middleware: its key (and the
    drain count's) is reserved, and a middleware under either is refused. Middleware
    run in this order and a call stops at the first that refuses it, so `extra` never
    sees a call without credentials or with a bad token (basic credentials outside
    Handshake are checked later, by the handler), and the drain count sees only calls
    every other middleware let in.
    """
    reserved = sorted({AUTH_MIDDLEWARE, DRAIN_MIDDLEWARE} & set(extra or {}))
    if reserved:
        raise ValueError(f"middleware key {', '.join(map(repr, reserved))} is reserved by the server; use another key")
    return {AUTH_MIDDLEWARE: AuthMiddlewareFactory(authenticator), **(extra or {}), DRAIN_MIDDLEWARE: drain}


class HeaderAuthHandler(flight.ServerAuthHandler):  # type: ignore[misc]
    """Lets the Handshake RPC succeed: the work is done by the middleware on headers.

    Clients such as `FlightClient.authenticate_basic_token` and the Flight SQL drivers
    send basic credentials on Handshake and read the bearer token from its response
    headers; every later call carries that token.
    """

    def authenticate(self, outgoing: Any, incoming: Any) -> None:
        return None

    def is_valid(self, token: bytes) -> bytes:
        return b""


def caller_of(context: flight.ServerCallContext | None) -> Caller:
    """The authenticated caller of a call; UNAUTHENTICATED when it has none.

    A call that did not pass the auth middleware (a server built without it) has no
    caller: it is refused, never given a default identity.
    """
    middleware = context.get_middleware(AUTH_MIDDLEWARE) if context is not None else None
    if context is None or not isinstance(middleware, AuthMiddleware):
        logger.error("call without the auth middleware refused")
        raise Unauthenticated("this server could not authenticate the call; it is refused")
    return middleware.caller(context)


def client_address(peer: str) -> str | None:
    """The client address of a gRPC peer string, as a throttling key (None when unknown).

    `ipv4:10.0.0.7:51234` gives `10.0.0.7`; IPv6 addresses give their /64 network, the
    block one host usually holds; Unix domain sockets give `unix`.
    """
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind == "unix":
        return "unix"
    host = rest.rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def require(caller: Caller, permission: str, what: str) -> None:
    if permission not in PERMISSIONS.get(caller.role, frozenset()):
        raise PermissionDenied(f"role '{caller.role}' may not {what}")


def check_bind_address(settings: Settings) -> None:
    """Without authentication the server only listens on loopback."""
    if settings.auth.enabled:
        return
    host = settings.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(
            f"refusing to listen on {host} without authentication: set FLIGHT_AUTH__JWT_SECRET "
            "(or FLIGHT_AUTH__JWT_PUBLIC_KEY_FILE), or bind FLIGHT_HOST=127.0.0.1"
        )
    logger.warning("authentication is off: every caller has full access (loopback only)")


def tls_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of FlightServerBase for the TLS settings (empty without TLS)."""
    tls = settings.tls
    if not tls.cert_file:
        return {}
    if not tls.key_file:
        raise SystemExit("FLIGHT_TLS__CERT_FILE needs FLIGHT_TLS__KEY_FILE")
    options: dict[str, Any] = {
        "tls_certificates": [flight.CertKeyPair(tls.cert_file.read_bytes(), tls.key_file.read_bytes())]
    }
    if tls.client_ca_file:
        options["verify_client"] = True
        options["root_certificates"] = tls.client_ca_file.read_bytes()
    return options


def configured_users(path: Path | None) -> dict[str, Credentials]:
    if path is None:
        return {}
    entries = json.loads(path.read_text())
    return {
        e["username"]: Credentials(
            e["username"],
            e["password_hash"],
            e.get("role", "viewer"),
            tuple(e["projects"]) if "projects" in e else None,
        )
        for e in entries
    }
