"""Backoff: exponential, capped, jittered within bounds, and bounded in attempts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.transports.backoff import Backoff, RetryPolicy

policies = st.builds(
    RetryPolicy,
    attempts=st.integers(1, 12),
    initial=st.floats(0, 10),
    multiplier=st.floats(1, 4),
    maximum=st.floats(0, 120),
    jitter=st.floats(0, 1),
)


@given(policy=policies, seed=st.integers(0, 2**32))
def test_waits_are_bounded_and_exponential(policy: RetryPolicy, seed: int) -> None:
    waits: list[float] = []
    backoff = Backoff(policy, sleep=waits.append, rng=random.Random(seed))
    tries = 1
    while backoff.wait():
        tries += 1
    assert tries == policy.attempts  # exactly `attempts` tries, then give up
    assert len(waits) == policy.attempts - 1
    for n, wait in enumerate(waits):
        ceiling = min(policy.maximum, policy.initial * policy.multiplier**n)
        assert ceiling * (1 - policy.jitter) - 1e-9 <= wait <= ceiling + 1e-9


def test_jitter_spreads_a_fleet() -> None:
    """Agents that lost the platform together do not come back in lock-step."""
    policy = RetryPolicy(initial=4.0, jitter=0.5)
    firsts = {round(Backoff(policy, rng=random.Random(i)).delay(0), 3) for i in range(50)}
    assert len(firsts) > 40
    assert all(2.0 <= f <= 4.0 for f in firsts)


def test_reset_after_progress() -> None:
    waits: list[float] = []
    backoff = Backoff(RetryPolicy(attempts=3, initial=1, jitter=0), sleep=waits.append)
    assert backoff.wait() and backoff.wait()
    backoff.reset()
    assert backoff.wait() and backoff.wait()
    assert not backoff.wait()
    assert waits == [1, 2, 1, 2]


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"initial": -1}, {"multiplier": 0.5}, {"jitter": 1.5}, {"maximum": -1}]
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
