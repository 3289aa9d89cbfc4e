"""Errors a user sees: each names the file and the field path that was wrong."""

from __future__ import annotations


class ChaintwinError(Exception):
    """Base for errors reported to the user without a traceback."""


class ConfigError(ChaintwinError):
    """A YAML file (or a --set override) does not match its schema."""


class EmulationError(ChaintwinError):
    """The emulated network could not be built, shaped or run."""


class ProcessFailed(EmulationError):
    """A process that the experiment required to succeed exited with an error."""
