"""Retry policy for remote fetches: exponential backoff, jitter, ``Retry-After``.

Pure arithmetic, so it is tested without a network.

Examples
--------
>>> p = RetryPolicy(max_retries=3, base_s=1.0, cap_s=10.0, jitter=0.0)
>>> [p.delay(a) for a in range(4)]
[1.0, 2.0, 4.0, 8.0]
>>> p.delay(0, retry_after_s=5.0)
5.0
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import SpecError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before re-sending a failed request.

    Parameters
    ----------
    max_retries : int
        Re-sends after the first attempt (0 disables retrying).
    base_s : float
        Delay before the first retry; doubled on each further retry.
    cap_s : float
        Upper bound on one delay (before honouring ``Retry-After``).
    jitter : float
        Fraction of the delay drawn at random, in [0, 1]: the delay is uniform in
        ``[(1 - jitter) * d, d]``, so clients that failed together do not retry together.
    """

    max_retries: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 0.5

    def __post_init__(self):
        if not (isinstance(self.max_retries, int) and self.max_retries >= 0):
            raise SpecError("RetryPolicy.max_retries", self.max_retries, "an integer >= 0")
        if not self.base_s >= 0 or not self.cap_s >= self.base_s:
            raise SpecError("RetryPolicy.base_s/cap_s", (self.base_s, self.cap_s), "0 <= base_s <= cap_s")
        if not 0 <= self.jitter <= 1:
            raise SpecError("RetryPolicy.jitter", self.jitter, "a fraction in [0, 1]")

    def delay(self, attempt: int, retry_after_s: float | None = None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (``attempt`` counts from 0).

        A server's ``Retry-After`` is a lower bound: we never retry sooner.
        """
        d = min(self.cap_s, self.base_s * 2.0 ** attempt)
        if self.jitter:
            d *= 1.0 - self.jitter * (rng or random).random()
        if retry_after_s is not None:
            d = max(d, retry_after_s)
        return d
