"""Speech units: frame encoders (mfcc, logmel, hubert), k-means codebooks, the units stage.

See docs/units.md. `lst_data.config` is imported first because it imports this package's
`config` module; importing `lst_data.units.config` on its own would otherwise be circular.
"""

import lst_data.config  # noqa: F401
