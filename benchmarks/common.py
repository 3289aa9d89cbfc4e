"""What every emulation benchmark does the same way: refuse to run without root, and
write its rows as JSON where asked."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def add_json_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--json", help="also write the rows here")


def needs_root() -> bool:
    """True (after saying why) when this is not root: Mininet needs it."""
    if os.geteuid() != 0:
        print("needs root (Mininet)", file=sys.stderr)
        return True
    return False


def write_json(path: str | None, rows: list[dict[str, Any]]) -> None:
    if path:
        Path(path).write_text(json.dumps(rows, indent=1))
