"""Basic-auth sign-ins through a real server: unknown users cost a password check, failures are throttled.

Attacks: telling which usernames exist, guessing one user's password, and spraying
guesses over many usernames from one client address.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.flight as flight
import pytest

from flight_server.security.auth import dummy_hash, hash_password
from flight_server.settings import AuthSettings, CacheSettings

from support.proxies import TcpProxy
from support.servers import ServerHandle, start_server, stop_server
from support.tokens import SECRET

WINDOW_S = 120.0
THROTTLED = r"too many failed sign-ins; retry in \d+ s"


class Clock:
    """The throttle's clock, moved by the test instead of sleeping."""

    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def signin(tmp_path: Path) -> Iterator[tuple[ServerHandle, Clock]]:
    users = tmp_path / "users.json"
    users.write_text(
        json.dumps(
            [
                {
                    "username": "bi-tool",
                    "password_hash": hash_password("pw-123", b"salt-salt-salt-1"),
                    "role": "analyst",
                },
                {"username": "other", "password_hash": hash_password("pw-456", b"salt-salt-salt-2"), "role": "viewer"},
            ]
        )
    )
    auth = AuthSettings(
        jwt_secret=SECRET,
        users_file=users,
        login_failures_per_user=3,
        login_failures_per_peer=5,
        login_window_s=WINDOW_S,
    )
    handle = start_server(tmp_path / "data", auth=auth, cache=CacheSettings(warm_top_n=0))
    clock = Clock()
    handle.app.auth.throttle.clock = clock
    yield handle, clock
    stop_server(handle)


def _basic(username: str, password: str) -> flight.FlightCallOptions:
    """Basic credentials sent on an ordinary call (not Handshake)."""
    value = base64.b64encode(f"{username}:{password}".encode())
    return flight.FlightCallOptions(headers=[(b"authorization", b"Basic " + value)])


def test_login_unknown_user_costs_the_same_password_check(signin: tuple[ServerHandle, Clock]) -> None:
    handle, _ = signin
    checked: list[str] = []
    real_check = handle.app.auth.check_password

    def spy(password: str, stored: str) -> bool:
        checked.append(stored)
        return real_check(password, stored)

    handle.app.auth.check_password = spy
    with pytest.raises(flight.FlightUnauthenticatedError, match="wrong username or password"):
        handle.client.authenticate_basic_token("nobody@example.com", "pw-123")
    with pytest.raises(flight.FlightUnauthenticatedError, match="wrong username or password"):
        handle.client.authenticate_basic_token("bi-tool", "not-it")
    unknown, known = checked
    assert unknown == dummy_hash() and unknown != known
    assert unknown.split("$")[:4] == known.split("$")[:4]  # scrypt at the same n, r and p
    # the dummy hash never signs anyone in, whatever the password
    with pytest.raises(flight.FlightUnauthenticatedError, match="wrong username or password"):
        handle.client.authenticate_basic_token("nobody-else", "")
    assert checked[2] == dummy_hash()


def test_login_failures_lock_the_username_even_for_the_right_password(signin: tuple[ServerHandle, Clock]) -> None:
    handle, clock = signin
    for _ in range(3):
        with pytest.raises(flight.FlightUnauthenticatedError, match="wrong username or password"):
            handle.client.authenticate_basic_token("bi-tool", "guess")
    with pytest.raises(flight.FlightUnauthenticatedError, match=THROTTLED) as caught:
        handle.client.authenticate_basic_token("bi-tool", "pw-123")
    assert "\n" not in str(caught.value).split(". Detail")[0]
    # the same client signs in as another user
    header, value = handle.client.authenticate_basic_token("other", "pw-456")
    assert value.startswith(b"Bearer ")
    # case variants of the username share its count
    with pytest.raises(flight.FlightUnauthenticatedError, match=THROTTLED):
        handle.client.authenticate_basic_token("BI-Tool", "pw-123")
    clock.now += WINDOW_S / 2
    with pytest.raises(flight.FlightUnauthenticatedError, match=THROTTLED):
        handle.client.authenticate_basic_token("bi-tool", "pw-123")
    clock.now += WINDOW_S / 2
    header, value = handle.client.authenticate_basic_token("bi-tool", "pw-123")
    bearer = flight.FlightCallOptions(headers=[(header, value)])
    assert list(handle.client.list_flights(options=bearer))


def test_login_failures_lock_the_client_address_not_others(signin: tuple[ServerHandle, Clock]) -> None:
    handle, clock = signin
    # spraying: one guess for each of many usernames, none reaching its own limit
    for n in range(5):
        with pytest.raises(flight.FlightUnauthenticatedError, match="wrong username or password"):
            list(handle.client.list_flights(options=_basic(f"user-{n}@example.com", "Summer2024!")))
    with pytest.raises(flight.FlightUnauthenticatedError, match=THROTTLED):
        list(handle.client.list_flights(options=_basic("bi-tool", "pw-123")))
    with pytest.raises(flight.FlightUnauthenticatedError, match=THROTTLED):
        list(handle.client.do_action(flight.Action("health", b""), options=_basic("bi-tool", "pw-123")))
    with pytest.raises(flight.FlightUnauthenticatedError, match=THROTTLED):
        handle.client.list_actions(options=_basic("other", "pw-456"))
    proxy = TcpProxy(handle.server.port, source_host="127.0.0.2")
    elsewhere = flight.connect(f"grpc://127.0.0.1:{proxy.port}")
    try:
        assert list(elsewhere.list_flights(options=_basic("bi-tool", "pw-123")))
    finally:
        elsewhere.close()
        proxy.cut()
    clock.now += WINDOW_S
    assert list(handle.client.list_flights(options=_basic("bi-tool", "pw-123")))
