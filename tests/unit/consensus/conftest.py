"""`@pytest.mark.long`: the consensus core's long sweeps (minutes), run on request only:

    CHAINTWIN_LONG=1 .venv/bin/python -m pytest tests/unit/consensus -m long
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: minutes-long sweeps; set CHAINTWIN_LONG=1 to run")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CHAINTWIN_LONG"):
        return
    skip = pytest.mark.skip(reason="long sweep: set CHAINTWIN_LONG=1 to run it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
