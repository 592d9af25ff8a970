"""Speech units: frame encoders (mfcc, logmel, hubert), k-means codebooks, the units stage. See docs/units.md."""
