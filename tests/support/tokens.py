"""Bearer tokens for tests of a secured server: one shared secret, tokens by role, calls with them."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pyarrow as pa
import pyarrow.flight as flight

from support.servers import ServerHandle

SECRET = "a-test-secret-long-enough-for-hs256-signing"


def token(role: str, projects: list[str] | None = None, sub: str = "someone", **extra: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "aud": "chrono-flight", "exp": now + 600, "iat": now, "role": role}
    if projects is not None:
        claims["projects"] = projects
    return jwt.encode({**claims, **extra}, SECRET, algorithm="HS256")


def options(bearer: str) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {bearer}".encode())])


def get(handle: ServerHandle, command: dict[str, Any], bearer: str) -> pa.Table:
    ticket = flight.Ticket(json.dumps(command).encode())
    return handle.client.do_get(ticket, options=options(bearer)).read_all()
