"""Exponential backoff with jitter, bounded in attempts.

Jitter keeps a fleet of agents that lost the platform at the same moment from reconnecting in
lock-step; the bound makes an operation fail with a clear error instead of hanging forever (the
daemon's schedule tries again at the next run).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries per operation; the n-th wait is ``initial * multiplier**n``, at most
    ``maximum``, of which a random part (``jitter``, 0..1) is taken off."""

    attempts: int = 6
    initial: float = 1.0
    multiplier: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial < 0 or self.multiplier < 1 or self.maximum < 0:
            raise ValueError(f"invalid retry policy {self}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"retry jitter must be within 0..1, got {self.jitter}")


@dataclass
class Backoff:
    """The waits of one operation; :meth:`reset` after progress so a long transfer over a
    flaky link is bounded per stall, not in total."""

    policy: RetryPolicy
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def reset(self) -> None:
        self.failures = 0

    def wait(self) -> bool:
        """Count a failure; sleep and return True if another attempt is allowed."""
        self.failures += 1
        if self.failures >= self.policy.attempts:
            return False
        self.sleep(self.delay(self.failures - 1))
        return True

    def delay(self, n: int) -> float:
        """The wait after the ``n``-th consecutive failure (0-based)."""
        base = min(self.policy.maximum, self.policy.initial * self.policy.multiplier**n)
        return base * (1 - self.policy.jitter * self.rng.random())
