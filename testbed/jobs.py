"""Registry of simulation jobs: what `mode: simulation` experiments run.

A job is a typed settings model, a `run(params, ctx)` function that writes CSVs and
figures into ctx.run_dir, and optionally `report(run_dir)` that redraws the figures
from saved CSVs only. Entries are "module:attribute" strings, imported on use, so
that `chaintwin doctor` and emulation runs never pay for importing the twin or
TensorFlow.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError


@dataclass(frozen=True)
class JobSpec:
    params: str
    """'module:Class' of the pydantic settings model."""
    run: str
    """'module:function' taking (params, JobContext)."""
    report: str | None = None
    """'module:function' taking (run_dir: Path) and redrawing the figures (PNG) from the
    run's CSVs; its return value is ignored."""
    summary: str = ""


@dataclass
class JobContext:
    run_dir: Path
    seed: int
    progress: Callable[[float, str], None]
    """Report progress: fraction done in [0, 1] and a short message."""
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("chaintwin.job"))


REGISTRY: dict[str, JobSpec] = {}


def register(name: str, spec: JobSpec) -> None:
    REGISTRY[name] = spec


def resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def get(name: str) -> JobSpec:
    _load_builtin()
    if name not in REGISTRY:
        raise ConfigError(f"simulation.job: unknown job {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def validate_params(exp: Any, source: str) -> Any:
    from testbed.config import validate

    spec = get(exp.simulation.job)
    model = resolve(spec.params)
    return validate(model, exp.simulation.params, f"{source} simulation.params")


def _load_builtin() -> None:
    """Import the modules that register the project's own jobs."""
    for module in ("twin.jobs", "abn.jobs"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
