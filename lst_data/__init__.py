"""lst-data: speech + text corpora for the Latent Speech-Text Transformer."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
