"""Authentication: bearer JWTs on every RPC, and a basic-auth handshake for drivers.

Tokens are verified with PyJWT against a key and algorithms fixed by configuration
(HS256 with a secret, or RS256/ES256 with a public key), never taken from the token;
`exp`, `sub` and `aud` are required, `iss` when configured. Claims: `role` (admin,
analyst, viewer, service) and `projects` (project ids). Drivers that speak basic auth
send `authorization: Basic ...`; the username and password are checked against the
`users` table (scrypt hashes) or a configured user list, and the answer carries a
short-lived bearer token signed by the server.

A sign-in costs the same whether the username exists or not: an unknown username (or
a stored hash that cannot be read) is checked against a dummy hash of the same scheme
and cost, and can never succeed. Failed sign-ins are throttled per username and per
client address (`LoginThrottle`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from flight_server.context import Caller
from flight_server.errors import Unauthenticated
from flight_server.security.login_throttle import LoginThrottle
from flight_server.settings import AuthSettings

logger = logging.getLogger(__name__)

ROLES = ("admin", "analyst", "viewer", "service")
# what each role may do; checked before any engine work
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"query", "metadata"}),
    "service": frozenset({"query", "metadata", "ingest"}),
    "analyst": frozenset({"query", "metadata", "sql"}),
    "admin": frozenset({"query", "metadata", "sql", "ingest", "admin"}),
}


SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # the cost of every hash this server makes


def hash_password(password: str, salt: bytes) -> str:
    """scrypt, in the `scrypt$n$r$p$salt$hash` form the users table stores."""
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


@functools.cache
def dummy_hash() -> str:
    """A hash of a random password nobody knows, at the cost of `hash_password`.

    Checked in place of a user's hash when there is no user, so that an unknown
    username costs the same as a wrong password; a match on it never signs anyone in.
    """
    return hash_password(secrets.token_urlsafe(24), secrets.token_bytes(16))


def verify_password(password: str, stored: str) -> bool:
    """Check a password against a `scrypt$n$r$p$salt$hash` string (constant time).

    A stored value that is not such a string fails, after the same work as a real check.
    """
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            raise ValueError("not an scrypt hash")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        verify_password(password, dummy_hash())
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class Credentials:
    """A user that may log in with basic auth, and what its token will grant."""

    username: str
    password_hash: str
    role: str
    projects: tuple[str, ...] | None


class Authenticator:
    def __init__(self, settings: AuthSettings, lookup_user: Callable[[str], Credentials | None] | None = None) -> None:
        self.settings = settings
        self._lookup_user = lookup_user
        self._verified: dict[str, tuple[Caller, float]] = {}
        self.throttle = LoginThrottle(
            settings.login_failures_per_user, settings.login_failures_per_peer, settings.login_window_s
        )
        self.check_password: Callable[[str, str], bool] = verify_password  # replaceable: tests count the checks
        if self.enabled and lookup_user is not None:
            dummy_hash()  # made now, so that the first unknown username costs no more than later ones
        if settings.jwt_public_key_file:
            self._verify_key: Any = settings.jwt_public_key_file.read_text()
            self._algorithms = [a for a in settings.algorithms if not a.startswith("HS")] or ["RS256", "ES256"]
        else:
            self._verify_key = settings.jwt_secret
            self._algorithms = ["HS256"]

    @property
    def enabled(self) -> bool:
        return bool(self.settings.jwt_secret or self.settings.jwt_public_key_file)

    def verify(self, token: str) -> Caller:
        """The caller a token speaks for; a verified token is remembered until it expires."""
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        caller, expires = self._verify(token)
        if len(self._verified) >= 10_000:
            self._verified.clear()
        self._verified[token] = (caller, expires)
        return caller

    def _verify(self, token: str) -> tuple[Caller, float]:
        options = {"require": ["exp", "sub", "aud"] + (["iss"] if self.settings.issuer else [])}
        try:
            claims = jwt.decode(
                token,
                self._verify_key,
                algorithms=self._algorithms,
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_s,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired; get a new one") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"token audience must be '{self.settings.audience}'") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the '{exc.claim}' claim") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated("token algorithm is not accepted") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token") from None
        return caller_from_claims(claims), float(claims["exp"])

    def issue(self, subject: str, role: str, projects: tuple[str, ...] | None, ttl_s: float | None = None) -> str:
        """A token signed by this server (HS256 with the secret)."""
        if not self.settings.jwt_secret:
            raise Unauthenticated("this server verifies tokens with a public key and cannot issue them")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject,
            "aud": self.settings.audience,
            "iat": now,
            "exp": now + int(ttl_s or self.settings.issued_token_ttl_s),
            "role": role,
        }
        if projects is not None:
            claims["projects"] = list(projects)
        if self.settings.issuer:
            claims["iss"] = self.settings.issuer
        return jwt.encode(claims, self.settings.jwt_secret, algorithm="HS256")

    def login(self, basic: str, peer: str | None = None) -> str:
        """The bearer token for an `authorization: Basic ...` header value.

        `peer` is the client's address when the transport reports it (for throttling).
        Exactly one password check runs per attempt that is not throttled, against the
        user's hash or the dummy hash.
        """
        padded = basic + "=" * (-len(basic) % 4)  # Go Flight clients send base64 without padding
        try:
            username, _, password = base64.b64decode(padded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise Unauthenticated("malformed basic credentials") from None
        stamp = self.throttle.begin(username, peer)
        user = self._lookup_user(username) if self._lookup_user else None
        matches = self.check_password(password, user.password_hash if user is not None else dummy_hash())
        if user is None or not matches:
            raise Unauthenticated("wrong username or password")
        self.throttle.succeeded(username, peer, stamp)
        return self.issue(user.username, user.role, user.projects)


def caller_from_claims(claims: dict[str, Any]) -> Caller:
    role = claims.get("role", "viewer")
    if role not in ROLES:
        raise Unauthenticated(f"token role must be one of {', '.join(ROLES)}")
    projects = claims.get("projects")
    if role == "admin":
        scope: tuple[str, ...] | None = None
    elif isinstance(projects, list) and all(isinstance(p, str) for p in projects):
        scope = tuple(projects)
    else:
        scope = ()
    return Caller(subject=str(claims["sub"]), role=role, projects=scope)
