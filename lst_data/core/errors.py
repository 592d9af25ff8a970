"""The one base class of user errors: what a user can fix (a config value, a flag, a path).

Both command lines print a `UserError` as one line and exit with `EXIT_USAGE`; anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2


class UserError(Exception):
    """A mistake in what the user asked for; the message names the field and what is allowed."""


class ConfigError(UserError, ValueError):
    """A config file or `--set` names an unknown field or gives a value that is not allowed."""


class InputError(UserError, FileNotFoundError):
    """An input path is missing or is not what the command reads (e.g. no manifest.parquet)."""
