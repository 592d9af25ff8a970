"""Forced alignment: manifest -> word, phone (and character) intervals + silence spans.

See docs/align.md. `lst_data.config` is imported first because it imports this package's
`config` module itself; importing `lst_data.align.config` before it would be circular.
"""

import lst_data.config  # noqa: F401
