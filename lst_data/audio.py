"""Audio I/O behind one small interface.

soundfile (libsndfile) decodes wav, flac, ogg and mp3 and writes wav/flac; soxr resamples.
torchaudio 2.11's own load/save would need torchcodec + FFmpeg, so it is not used for I/O.
Every later stage reads 16 kHz mono float32 through `read_audio`; `num_samples` is
always what decoding produced, never a header's claim.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeGuard

import numpy as np
import soundfile as sf
import soxr

from lst_data.core.storage import StoragePath, is_url, local_output, location

if TYPE_CHECKING:
    from upath import UPath

READABLE_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
# Sources in these containers at the target rate and mono are read in place, not copied.
IN_PLACE_SUFFIXES = (".wav", ".flac")


class AudioError(Exception):
    """The file exists but cannot be decoded (the reject code is audio_unreadable)."""


class SegmentPastEnd(AudioError):
    """A segment (offset + duration) reaches past the end of its file (reject code segment_past_end)."""


# How far a segment may reach past its file's end: manifests round durations (NeMo to 2-3
# decimals), and a 10 ms frame is the finest step any later stage uses.
SEGMENT_END_TOLERANCE = 0.01


def decode(path: str | StoragePath | BinaryIO, offset: float = 0.0, duration: float | None = None,
           name: str | None = None) -> tuple[np.ndarray, int]:
    """All channels of `path` (a file, or a file object holding encoded audio) as float32
    [frames, channels] and its sample rate; `name` names a file object in errors.

    `offset` and `duration` (s) select a segment: only its frames are decoded (soundfile
    seeks), so a supervision inside a long recording never costs a decode of the whole file.
    """
    if isinstance(path, str) and is_url(path):
        path = location(path)
    if _is_object(path):  # an object: fetched whole, once
        try:
            name, path = path.name, io.BytesIO(path.read_bytes())
        except OSError as err:
            raise AudioError(f"{path}: {err}") from err
    name = Path(path).name if isinstance(path, (str, Path)) else name or "embedded audio"
    try:
        with sf.SoundFile(str(path) if isinstance(path, Path) else path) as audio:
            rate = audio.samplerate
            start = round(offset * rate)
            if duration is not None and duration <= 0:
                raise AudioError(f"{name}: segment at {offset:.3f} s has duration {duration} s")
            if start > audio.frames or (duration is not None and offset + duration > audio.frames / rate
                                        + SEGMENT_END_TOLERANCE):
                raise SegmentPastEnd(f"{name}: segment {offset:.3f} s + {duration} s reaches past the end of "
                                     f"the file's {audio.frames / rate:.3f} s")
            if start:
                audio.seek(start)
            frames = -1 if duration is None else round(duration * rate)
            samples = audio.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as err:
        raise AudioError(f"{name}: {err}") from err
    return samples, int(rate)


def _is_object(path: str | StoragePath | BinaryIO) -> TypeGuard[UPath]:
    """Whether `path` names an object on a remote filesystem (fsspec's `fs` behind it), not a file."""
    return not isinstance(path, (str, Path)) and hasattr(path, "fs")


def header_seconds(path: str | Path | BinaryIO) -> float | None:
    """The length the file's header declares (frames / sample rate), read without decoding; None
    when there is no usable header (the decoder then reports the file)."""
    try:
        info = sf.info(str(path) if isinstance(path, Path) else path)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
        return None
    finally:
        if hasattr(path, "seek"):
            path.seek(0)
    return info.frames / info.samplerate if info.samplerate > 0 and 0 <= info.frames < 2**62 else None


def header_frames(path: str | StoragePath, data: bytes | None = None) -> int | None:
    """The number of frames the file's header promises, or None when it promises none.

    libsndfile quietly shortens a WAV whose data chunk claims more bytes than the file
    holds, so for WAV the RIFF chunks are read here; for other containers soundfile's count
    (FLAC STREAMINFO) is the promise. A streaming WAV's 0 or 0xFFFFFFFF size promises nothing.
    `data`, when given, is the file's content (fetched from object storage); `path` names it.
    """
    path = Path(str(path))
    if path.suffix.lower() != ".wav":
        try:
            frames = sf.info(str(path) if data is None else io.BytesIO(data)).frames
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
            return None
        return frames if 0 < frames < 2**62 else None
    return _wav_data_frames(path, data)


def _wav_data_frames(path: Path, data: bytes | None) -> int | None:
    with open(path, "rb") if data is None else io.BytesIO(data) as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"fmt ":
                fmt = handle.read(size + (size & 1))
                block_align = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else None
            elif chunk_id == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            else:
                handle.seek(size + (size & 1), 1)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of [frames, channels] (or pass 1-D through)."""
    if samples.ndim == 1:
        return samples
    return samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def read_audio(path: str | StoragePath, target_rate: int | None = 16000, offset: float = 0.0,
               duration: float | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 samples at `target_rate` (or the file's own rate when None), of the whole
    file or of the segment `offset` .. `offset + duration` (s)."""
    samples, rate = decode(path, offset, duration)
    mono = to_mono(samples)
    if target_rate is None:
        return mono, rate
    return resample(mono, rate, target_rate), target_rate


def write_audio(path: str | StoragePath, samples: np.ndarray, rate: int) -> None:
    """Write mono 16-bit PCM audio; the container (.wav or .flac) follows the suffix.

    16-bit, not float: libsndfile stamps float WAV files with the time of writing (PEAK
    chunk), which would make the same audio written twice differ in bytes.
    """
    path = location(path)
    with local_output(path) as local:
        sf.write(str(local), np.clip(samples, -1.0, 1.0), rate, subtype="PCM_16", format=path.suffix[1:].upper())


def encode_flac(samples: np.ndarray, rate: int) -> bytes:
    """16-bit FLAC bytes of mono audio (for shard members)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def audio_identity(path: str | Path) -> str:
    """What identifies a file's current content cheaply: its size and modification time."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def changed_since_ingest(path: str, identity: str | None) -> str | None:
    """Why the file ingest read in place is no longer that file (None: unchanged, or not recorded)."""
    if identity is None:
        return None
    try:
        now = audio_identity(path)
    except OSError as err:
        return f"{path}: {err.strerror} (it was there at ingest)"
    if now == identity:
        return None
    return (f"{Path(path).name} changed after ingest read it (size:mtime {identity} -> {now}); "
            "rerun with --resume to ingest it again")

