"""Optional extras: libraries only some inputs and outputs need (lhotse, datasets, NeMo's normaliser).

They are imported where they are used, through `require_extra`, so a user without them
gets one line naming the extra to install instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lst_data.core.errors import UserError

EXTRA_OF = {"lhotse": "interop", "datasets": "interop", "nemo_text_processing": "nemo"}


def require_extra(module: str, purpose: str) -> ModuleType:
    """`import module`, or a UserError saying which extra of lst-data provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRA_OF[module.split(".")[0]]
        raise UserError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: pip install 'lst-data[{extra}]'"
        ) from err
