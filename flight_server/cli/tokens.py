"""`flight-server demo-tokens`: a signed token per role, for trying the demo with auth on.

Tokens are bearer credentials (one of them an admin's) that cannot be revoked before
they expire, so they are printed only by this command, when asked, and never by
`serve` or in any log. They are signed with the secret, audience and issuer of the same
settings the server reads, so they work against a server started with them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from rich.console import Console

from flight_server.settings import AuthSettings, Settings

ROLES = ("admin", "analyst", "viewer", "service")  # the roles of flight_server.security.auth


def demo_tokens(settings: AuthSettings, ttl_s: float, roles: tuple[str, ...] = ROLES) -> list[tuple[str, str, str]]:
    """(role, scope, token) per role: admin over all projects, the others over three demo projects."""
    from flight_server.demo.analytics import DEMO_PROJECTS
    from flight_server.security.auth import Authenticator  # loaded here: the other commands start without it

    auth = Authenticator(settings)
    projects = tuple(p for p, _, _ in DEMO_PROJECTS[:3])
    out = []
    for role in roles:
        scope = None if role == "admin" else projects
        token = auth.issue(f"demo-{role}", role, scope, ttl_s=ttl_s)
        out.append((role, "all projects" if scope is None else ", ".join(scope), token))
    return out


def _lifetime(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def run_demo_tokens(args: argparse.Namespace, settings: Settings) -> int:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if not settings.auth.jwt_secret or settings.auth.jwt_public_key_file:
        err.print(
            "demo tokens are signed with FLIGHT_AUTH__JWT_SECRET: set it to the server's secret "
            "(a server that verifies tokens with a public key takes tokens from your identity provider)"
        )
        return 1
    ttl_s = args.ttl_s or settings.auth.issued_token_ttl_s
    roles = (args.role,) if args.role else ROLES
    tokens = demo_tokens(settings.auth, ttl_s, roles)
    if args.role:
        sys.stdout.write(tokens[0][2] + "\n")
        return 0
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl_s)).strftime("%Y-%m-%d %H:%M UTC")
    err.print(
        f"Demo tokens, for trying the demo only: each is valid for {_lifetime(ttl_s)} (until {until}) and "
        "cannot be revoked before then. Send one as 'authorization: Bearer <token>', "
        "e.g. flight-server query --token <token> ..."
    )
    for role, scope, token in tokens:
        sys.stdout.write(f"{role:<8} ({scope}): {token}\n")
    return 0


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return seconds


def add_parser(sub: Any) -> None:
    tokens = sub.add_parser(
        "demo-tokens",
        help="print a demo token per role, signed with FLIGHT_AUTH__JWT_SECRET (only when asked; never logged)",
        description="Print a signed token per role (admin, analyst, viewer, service) for trying the demo with "
        "authentication on. The tokens use the server's settings (secret, audience, issuer), live "
        "FLIGHT_AUTH__ISSUED_TOKEN_TTL_S seconds unless --ttl-s says otherwise, and cannot be revoked.",
    )
    tokens.add_argument("--role", choices=ROLES, help="print only this role's token, bare (for scripts)")
    tokens.add_argument(
        "--ttl-s", type=_positive_seconds, help="lifetime in seconds (default FLIGHT_AUTH__ISSUED_TOKEN_TTL_S)"
    )
