"""The user error that lst_model's library functions raise about what the options asked for."""

from __future__ import annotations

from lst_data.core.errors import UserError


class OptionError(UserError, ValueError):
    """What the options ask for cannot be done with these inputs: no tokenizer near the shards,
    an utterance id that is not there, a prompt that normalizes to nothing. `option` names the
    option at fault, when one is; `lst-model` shows it as click shows a bad option value (or,
    without one, a usage error): one line, exit code 2."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option
