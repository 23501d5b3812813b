"""Throttling of basic-auth sign-ins: failures per username and per client address.

Each key (a username, a client address) may have `limit` failed sign-ins within the
last `window_s` seconds; past that, every attempt for the key, with the right password
or not, is refused with "too many failed sign-ins; retry in N s" until its oldest
failure leaves the window. Invariants:

- an attempt counts as failed from the moment it starts and is forgiven once it
  succeeds, so parallel attempts cannot get past the limit between check and count;
- a refused attempt is not counted (it did not try a password), so a throttled key
  frees up `window_s` after its last real attempt at the latest;
- a success clears the username's failures but not the address's: a working account
  does not reset the count of an address that is guessing other accounts' passwords;
- memory is bounded: keys whose failures all left the window are dropped, and past
  `max_keys` the least recently failing keys go first.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from flight_server.errors import Unauthenticated

logger = logging.getLogger(__name__)


class LoginThrottle:
    def __init__(
        self,
        per_user: int,
        per_peer: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.per_user = per_user
        self.per_peer = per_peer
        self.window_s = window_s
        self.clock = clock  # replaceable, so that tests move time instead of sleeping
        self._max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _keys(self, username: str, peer: str | None) -> list[tuple[str, int]]:
        keys = [(f"user:{username.strip().casefold()}", self.per_user)]
        if peer:
            keys.append((f"peer:{peer}", self.per_peer))
        return keys

    def begin(self, username: str, peer: str | None) -> float:
        """Count a sign-in attempt as failed, or refuse it; returns its stamp for `succeeded`.

        `peer` is the client address when the transport reports it, None otherwise.
        """
        keys = self._keys(username, peer)
        with self._lock:
            now = self.clock()
            self._expire(now)
            wait, reached = 0.0, []
            for key, limit in keys:
                stamps = self._recent(key, now)
                if stamps is not None and len(stamps) >= limit:
                    # the count drops under the limit when this failure leaves the window
                    wait = max(wait, stamps[len(stamps) - limit] + self.window_s - now)
                    reached.append(key.split(":", 1)[0])
            if reached:
                logger.warning(
                    "sign-in refused: too many failures",
                    extra={"fields": {"limit": reached, "retry_s": round(wait, 1)}},
                )
                raise Unauthenticated(f"too many failed sign-ins; retry in {max(1, math.ceil(wait))} s")
            for key, _ in keys:
                self._failures.setdefault(key, deque()).append(now)
                self._failures.move_to_end(key)
            while len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)
        return now

    def succeeded(self, username: str, peer: str | None, stamp: float) -> None:
        """Forgive the attempt begun at `stamp`, and every failure of the username."""
        (user_key, _), *rest = self._keys(username, peer)
        with self._lock:
            self._failures.pop(user_key, None)
            for key, _ in rest:
                stamps = self._failures.get(key)
                if stamps is not None and stamp in stamps:
                    stamps.remove(stamp)
                    if not stamps:
                        del self._failures[key]

    def _recent(self, key: str, now: float) -> deque[float] | None:
        """The failures of `key` within the window (None when there are none)."""
        stamps = self._failures.get(key)
        if stamps is None:
            return None
        while stamps and stamps[0] <= now - self.window_s:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
            return None
        return stamps

    def _expire(self, now: float) -> None:
        """Drop the keys whose failures all left the window.

        Keys are ordered by their newest failure, so the stale ones are at the front.
        """
        horizon = now - self.window_s
        while self._failures:
            key, stamps = next(iter(self._failures.items()))
            if stamps and stamps[-1] > horizon:
                return
            del self._failures[key]
