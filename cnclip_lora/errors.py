"""Error types the package raises for problems a user can fix.

The CLI prints these as one clear message and exits non-zero, without a traceback;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CnClipLoraError(ValueError):
    """Base class for user-facing errors (bad input, bad option, bad artefact)."""


class DataError(CnClipLoraError):
    """The data directory or one of its files is unusable.

    ``problems`` holds every problem found (not only the first), so a user can fix
    them all in one go.
    """

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


class ConfigError(CnClipLoraError):
    """An option has a value that cannot work; the message names the option and the fix."""


class UnsafeArtifactError(CnClipLoraError):
    """A weights file in a format that can execute code on load (pickle) was refused."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says how to resume. Still a ``KeyboardInterrupt``, so
    notebooks and callers that stop on Ctrl-C keep doing so."""
