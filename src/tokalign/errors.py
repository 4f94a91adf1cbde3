"""The errors a user can fix: the CLI prints them as one line and exits with status 2.

Anything else is a bug in tokalign or a library and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Input or environment the user can fix; the message says what and how."""


class ConfigError(UserError, ValueError):
    """A config that cannot run; the message names the key, the value and what is allowed."""


class DataError(UserError, ValueError):
    """Data that cannot feed the chosen method; the message names the file, line or columns."""


class ModelError(UserError, RuntimeError):
    """A model could not be found, built or matched; the message says what to do."""


class StorageError(UserError, OSError):
    """The disk is full or a path is not writable; the message names the path."""


class LaunchError(UserError, RuntimeError):
    """Worker processes failed; their output above says why."""


class DivergenceError(UserError, FloatingPointError):
    """Training produced a non-finite loss, gradient or weights; nothing non-finite was saved."""


class RewardError(UserError, RuntimeError):
    """A user's reward function failed or returned something unusable; the message names it and the row."""
