"""The re-measure rule of the emulation tests: only an unreliable run earns another try."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.emulation.reliable import ATTEMPTS, until_reliable


def _runs(statuses: list[str]):  # type: ignore[no-untyped-def]
    made: list[int] = []

    def run(attempt: int) -> tuple[Path, dict[str, Any]]:
        made.append(attempt)
        status = statuses[attempt - 1]
        return Path("."), {"health": {"status": status, "reasons": [f"r{attempt}"]}}
    return run, made


def _miss(run_dir: Path, man: dict[str, Any]) -> None:
    raise AssertionError("off by 2 ms")


def test_a_miss_in_a_run_judged_ok_fails_at_once() -> None:
    run, made = _runs(["unreliable", "ok", "ok"])
    with pytest.raises(AssertionError, match=r"off by 2 ms \(attempt 2, health ok"):
        with pytest.warns(UserWarning):
            until_reliable("t", run, _miss)
    assert made == [1, 2]


def test_a_pass_after_an_unreliable_miss_passes() -> None:
    run, made = _runs(["unreliable", "ok", "ok"])
    calls: list[int] = []

    def check(run_dir: Path, man: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise AssertionError("late")

    with pytest.warns(UserWarning, match="running it again"):
        until_reliable("t", run, check)
    assert made == [1, 2]


def test_misses_in_only_unreliable_runs_are_inconclusive_not_passed() -> None:
    run, made = _runs(["unreliable"] * ATTEMPTS)
    with pytest.raises(pytest.skip.Exception, match="inconclusive.*r1.*r2.*r3"):
        with pytest.warns(UserWarning):
            until_reliable("t", run, _miss)
    assert made == list(range(1, ATTEMPTS + 1))
