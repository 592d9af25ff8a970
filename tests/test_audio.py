import numpy as np
import pytest
import soundfile as sf

from lst_data.audio import AudioError, encode_flac, read_audio


def test_read_resamples_and_downmixes(tmp_path):
    rate = 44100
    t = np.arange(rate) / rate
    left = np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, -left * 0.5], axis=1).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, rate)
    samples, out_rate = read_audio(tmp_path / "s.wav", 16000)
    assert out_rate == 16000 and samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 16000) <= 1
    # Mean of the channels: a 440 Hz tone of amplitude 0.25 survives resampling.
    assert 0.22 < np.abs(samples[1000:-1000]).max() < 0.28
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 16000 / len(samples) - 440) < 2


def test_garbage_raises_audio_error(tmp_path):
    (tmp_path / "x.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    with pytest.raises(AudioError):
        read_audio(tmp_path / "x.flac")


def test_flac_bytes_roundtrip():
    import io

    x = (0.5 * np.sin(np.arange(8000) / 7)).astype(np.float32)
    y, rate = sf.read(io.BytesIO(encode_flac(x, 16000)), dtype="float32")
    assert rate == 16000 and np.max(np.abs(x - y)) < 1e-4
