"""Token verification and the basic-auth login, on their own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flight_server.errors import Unauthenticated
from flight_server.security.auth import Authenticator, Credentials, caller_from_claims, hash_password, verify_password
from flight_server.settings import AuthSettings

SECRET = "test-secret-that-is-long-enough-for-hs256"


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "aud": "chrono-flight", "exp": now + 300, "iat": now, "role": "analyst",
            "projects": ["proj-001"], **extra}  # fmt: skip


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path_factory.mktemp("keys") / "public.pem"
    path.write_bytes(public)
    return key, path


def test_auth_valid_hs256_token_gives_caller() -> None:
    auth = Authenticator(AuthSettings(jwt_secret=SECRET))
    caller = auth.verify(jwt.encode(_claims(), SECRET, algorithm="HS256"))
    assert (caller.subject, caller.role, caller.projects) == ("alice", "analyst", ("proj-001",))


def test_auth_valid_rs256_and_es256_tokens(rsa_keys: tuple[Any, Path], tmp_path: Path) -> None:
    key, path = rsa_keys
    auth = Authenticator(AuthSettings(jwt_public_key_file=path))
    assert auth.verify(jwt.encode(_claims(), key, algorithm="RS256")).subject == "alice"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_path = tmp_path / "ec.pem"
    ec_path.write_bytes(
        ec_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert (
        Authenticator(AuthSettings(jwt_public_key_file=ec_path))
        .verify(jwt.encode(_claims(), ec_key, algorithm="ES256"))
        .subject
        == "alice"
    )


def _none_token() -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(_claims()).encode()).rstrip(b"=").decode()
    return f"{header}.{body}."


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: _none_token(), "algorithm|invalid"),
        (lambda: jwt.encode(_claims(exp=int(time.time()) - 3600), SECRET, algorithm="HS256"), "expired"),
        (lambda: jwt.encode(_claims(nbf=int(time.time()) + 3600), SECRET, algorithm="HS256"), "not valid yet"),
        (lambda: jwt.encode({k: v for k, v in _claims().items() if k != "exp"}, SECRET, algorithm="HS256"), "exp"),
        (lambda: jwt.encode({k: v for k, v in _claims().items() if k != "sub"}, SECRET, algorithm="HS256"), "sub"),
        (lambda: jwt.encode(_claims(aud="other"), SECRET, algorithm="HS256"), "audience"),
        (lambda: jwt.encode(_claims(), "another-secret-of-sufficient-length!!", algorithm="HS256"), "invalid"),
        (lambda: "garbage", "invalid"),
        (lambda: jwt.encode(_claims(role="root"), SECRET, algorithm="HS256"), "role"),
    ],
)
def test_auth_bad_hs256_tokens_are_unauthenticated(make: Any, message: str) -> None:
    auth = Authenticator(AuthSettings(jwt_secret=SECRET))
    with pytest.raises(Unauthenticated, match=message):
        auth.verify(make())


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def test_auth_hs256_signed_with_the_public_key_is_refused(rsa_keys: tuple[Any, Path]) -> None:
    # the classic key-confusion attack: HMAC with the public key's PEM as the secret
    _, path = rsa_keys
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    body = _b64(json.dumps(_claims()).encode())
    signature = _b64(hmac.new(path.read_bytes(), header + b"." + body, hashlib.sha256).digest())
    forged = b".".join([header, body, signature]).decode()
    with pytest.raises(Unauthenticated, match="algorithm"):
        Authenticator(AuthSettings(jwt_public_key_file=path)).verify(forged)


def test_auth_issuer_checked_when_configured() -> None:
    auth = Authenticator(AuthSettings(jwt_secret=SECRET, issuer="https://auth.example"))
    with pytest.raises(Unauthenticated, match="iss"):
        auth.verify(jwt.encode(_claims(), SECRET, algorithm="HS256"))
    with pytest.raises(Unauthenticated, match="issuer"):
        auth.verify(jwt.encode(_claims(iss="https://evil.example"), SECRET, algorithm="HS256"))
    assert auth.verify(jwt.encode(_claims(iss="https://auth.example"), SECRET, algorithm="HS256")).subject == "alice"


def test_auth_admin_is_unscoped_and_missing_projects_means_none() -> None:
    assert caller_from_claims({"sub": "a", "role": "admin", "projects": ["x"]}).projects is None
    assert caller_from_claims({"sub": "v", "role": "viewer"}).projects == ()


def test_auth_basic_login_issues_a_verifiable_token() -> None:
    stored = hash_password("s3cret", b"0123456789abcdef")
    user = Credentials("bob@example.com", stored, "viewer", ("proj-002",))
    auth = Authenticator(AuthSettings(jwt_secret=SECRET), lambda name: user if name == user.username else None)
    token = auth.login(base64.b64encode(b"bob@example.com:s3cret").decode())
    caller = auth.verify(token)
    assert (caller.subject, caller.role, caller.projects) == ("bob@example.com", "viewer", ("proj-002",))
    for bad in (b"bob@example.com:wrong", b"nobody:s3cret", b"no-colon"):
        with pytest.raises(Unauthenticated):
            auth.login(base64.b64encode(bad).decode())
    with pytest.raises(Unauthenticated, match="malformed"):
        auth.login("%%%")


def test_auth_password_check_rejects_other_schemes() -> None:
    assert not verify_password("x", "md5$abc")
    assert not verify_password("x", "not even close")
