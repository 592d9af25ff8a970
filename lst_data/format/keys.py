"""Utterance id -> sample key: the name of an utterance's tar members and derived files.

webdataset splits a member name at its first dot, so a key may use only `[A-Za-z0-9_-]`.
Any UTF-8 id is accepted (`spk/utt.1`, `naïve`, 300 characters): an id that is already a
safe key of at most MAX_KEY_CHARS characters is its own key; any other id becomes a
readable prefix plus 64 bits (16 hex digits) of its sha256, so derived file names
(`KEY.flac`, `KEY.TextGrid`) stay short and two ids share a key only by a 2^-64 chance.
Ingest still checks every key of a corpus for collisions (`key_collision`), so a shared key
is rejected, never overwritten. The original id is kept inside the sample JSON.
"""

from __future__ import annotations

import hashlib
import re

MAX_KEY_CHARS = 100
_PREFIX_CHARS = 64
_HASH_HEX_DIGITS = 16  # 64 bits
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_SAFE_KEY = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_KEY_CHARS}}}")


def sanitize_key(utterance_id: str) -> str:
    """The WebDataset-safe key of an utterance id (at most MAX_KEY_CHARS characters)."""
    if _SAFE_KEY.fullmatch(utterance_id):
        return utterance_id
    prefix = _KEY_UNSAFE.sub("_", utterance_id)[:_PREFIX_CHARS]
    digest = hashlib.sha256(utterance_id.encode("utf-8", errors="surrogatepass")).hexdigest()[:_HASH_HEX_DIGITS]
    return f"{prefix}_{digest}" if prefix else digest
