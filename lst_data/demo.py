"""The built-in demo corpus: English speech with exact word boundaries, no download.

Each word is synthesized on its own with espeak-ng, trimmed to where its signal starts
and ends, and the pieces are joined with known gaps: short joins between words, longer
pauses at commas, and silence before and after the sentence. Because the joins are ours,
the word boundaries and pauses written to `ground_truth.json` are exact, which is what
the alignment tests measure aligners against. The corpus is in MFA layout (one folder per
speaker, .wav + .lab), so it is also the input of `make demo`.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import soundfile as sf

from lst_data.audio import resample, to_mono, write_audio
from lst_data.text import normalize_text

SAMPLE_RATE = 16000

# Written for this project; commas mark the pauses the aligners must find.
SENTENCES = [
    "The river was cold, but the children swam across it anyway.",
    "She sells sea shells by the quiet harbour every summer morning.",
    "After the storm, the old bridge needed careful repair.",
    "A small brown dog waited patiently beside the garden gate.",
    "We planted tomatoes, beans and peppers in the spring.",
    "The library opens early on weekdays and closes late on Fridays.",
    "When the train stopped, nobody wanted to leave the warm carriage.",
    "He painted the fence green because the neighbours asked him to.",
    "The baker woke before dawn, lit the oven, and shaped the bread.",
    "Every student brought a notebook and a pencil to the exam.",
    "The wind carried the smell of rain across the open fields.",
    "My grandmother kept her letters in a wooden box under the bed.",
    "If the weather is clear tonight, we will look for the comet.",
    "The market was crowded, so we bought our apples somewhere else.",
    "Three boats sailed slowly past the lighthouse at sunset.",
    "The teacher smiled, closed the book, and sent everyone home.",
    "Our team finished the project a week before the deadline.",
    "Bright lanterns hung from every window along the narrow street.",
    "The kettle whistled loudly while the guests were talking.",
    "Later that evening, the musicians played a gentle song.",
    "A careful reader notices the small details in a story.",
    "The mountain path was steep, rocky, and covered with snow.",
    "They opened the windows to let the fresh air inside.",
    "The clock in the hall struck twelve as the lights went out.",
]

# (speaker, espeak-ng voice): several accents and a female variant.
VOICES = [
    ("spk_us", "en-us"),
    ("spk_gb", "en-gb"),
    ("spk_rp", "en-gb-x-rp"),
    ("spk_f3", "en-us+f3"),
    ("spk_sc", "en-gb-scotland"),
    ("spk_m7", "en-us+m7"),
]
RATES = [150, 175, 135, 195]

WORD_JOIN = (0.010, 0.035)  # s, shorter than any silence threshold
COMMA_PAUSE = (0.28, 0.45)
EDGE_SILENCE = (0.20, 0.35)
NOISE_FLOOR = 0.0015  # keeps silence from being digital zero, as in real recordings


@dataclass(frozen=True)
class WordTruth:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class PauseTruth:
    start: float
    end: float
    kind: str  # "comma", "leading", "trailing"


def _espeak(word: str, voice: str, rate: int) -> np.ndarray:
    """One word from espeak-ng at 16 kHz mono, trimmed to its audible extent."""
    completed = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", word],
        check=True,
        capture_output=True,
    )
    samples, rate_in = sf.read(io.BytesIO(completed.stdout), dtype="float32", always_2d=True)
    samples = resample(to_mono(samples), rate_in, SAMPLE_RATE)
    return _trim(samples)


def _trim(samples: np.ndarray, window: int = 80, rel_threshold: float = 0.02) -> np.ndarray:
    """Cut leading/trailing near-silence (5 ms windows under 2% of the peak)."""
    n = len(samples) // window
    if n == 0:
        return samples
    energy = np.abs(samples[: n * window]).reshape(n, window).max(axis=1)
    loud = np.flatnonzero(energy >= rel_threshold * energy.max())
    return samples[loud[0] * window : (loud[-1] + 1) * window]


def _tokens_with_commas(sentence: str) -> list[tuple[str, bool]]:
    """(normalized word, comma follows) for each word of a sentence."""
    out: list[tuple[str, bool]] = []
    for token in sentence.split():
        words = normalize_text(token).words
        for i, word in enumerate(words):
            out.append((word, i == len(words) - 1 and bool(re.search(r"[,;:]$", token))))
    return out


def synthesize_utterance(
    sentence: str, voice: str, rate: int, rng: np.random.Generator, cache: dict
) -> tuple[np.ndarray, list[WordTruth], list[PauseTruth]]:
    tokens = _tokens_with_commas(sentence)
    pieces: list[np.ndarray] = []
    words: list[WordTruth] = []
    pauses: list[PauseTruth] = []
    cursor = 0

    def silence(seconds: float) -> None:
        nonlocal cursor
        n = int(round(seconds * SAMPLE_RATE))
        pieces.append(np.zeros(n, dtype=np.float32))
        cursor += n

    lead = rng.uniform(*EDGE_SILENCE)
    silence(lead)
    pauses.append(PauseTruth(0.0, cursor / SAMPLE_RATE, "leading"))
    for index, (word, comma) in enumerate(tokens):
        audio = cache[(word, voice, rate)]
        start = cursor
        pieces.append(audio)
        cursor += len(audio)
        words.append(WordTruth(word, start / SAMPLE_RATE, cursor / SAMPLE_RATE))
        if index == len(tokens) - 1:
            break
        if comma:
            pause_start = cursor
            silence(rng.uniform(*COMMA_PAUSE))
            pauses.append(PauseTruth(pause_start / SAMPLE_RATE, cursor / SAMPLE_RATE, "comma"))
        else:
            silence(rng.uniform(*WORD_JOIN))
    tail_start = cursor
    silence(rng.uniform(*EDGE_SILENCE))
    pauses.append(PauseTruth(tail_start / SAMPLE_RATE, cursor / SAMPLE_RATE, "trailing"))
    signal = np.concatenate(pieces)
    signal = signal / max(1e-6, float(np.abs(signal).max())) * 0.8
    signal = signal + rng.normal(0.0, NOISE_FLOOR, size=signal.shape).astype(np.float32)
    return signal.astype(np.float32), words, pauses


def demo_plan(n_utterances: int) -> list[tuple[str, str, str, int, str]]:
    """(id, speaker, espeak voice, rate, sentence) of each demo utterance: voices cycle
    every utterance and sentences every len(SENTENCES), so a sentence recurs in several voices."""
    plan = []
    for i in range(n_utterances):
        speaker, voice = VOICES[i % len(VOICES)]
        rate = RATES[(i // len(VOICES)) % len(RATES)]
        plan.append((f"{speaker}_{i:03d}", speaker, voice, rate, SENTENCES[i % len(SENTENCES)]))
    return plan


def synthesize_demo_corpus(out_dir: str | Path, n_utterances: int = 36, seed: int = 0) -> Path:
    """Write the demo corpus (MFA layout) and ground_truth.json to `out_dir`; return it."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng; `make setup` installs it)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = demo_plan(n_utterances)
    needed = sorted({(w, voice, rate) for _, _, voice, rate, s in plan for w, _ in _tokens_with_commas(s)})
    with ThreadPoolExecutor(max_workers=4) as pool:
        cache = dict(zip(needed, pool.map(lambda key: _espeak(*key), needed), strict=True))

    rng = np.random.default_rng(seed)
    utterances = []
    for utt_id, speaker, voice, rate, sentence in plan:
        signal, words, pauses = synthesize_utterance(sentence, voice, rate, rng, cache)
        audio_rel = Path(speaker) / f"{utt_id}.wav"
        write_audio(out_dir / audio_rel.with_suffix(".wav"), signal, SAMPLE_RATE)
        (out_dir / speaker / f"{utt_id}.lab").write_text(sentence + "\n", encoding="utf-8")
        utterances.append(
            {
                "id": utt_id,
                "speaker": speaker,
                "voice": voice,
                "rate": rate,
                "text": sentence,
                "normalized_text": " ".join(w.word for w in words),
                "audio": audio_rel.as_posix(),
                "duration": len(signal) / SAMPLE_RATE,
                "words": [asdict(w) for w in words],
                "pauses": [asdict(p) for p in pauses],
            }
        )
    truth = {"sample_rate": SAMPLE_RATE, "seed": seed, "utterances": utterances}
    (out_dir / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    return out_dir


def load_ground_truth(corpus_dir: str | Path) -> dict:
    return json.loads((Path(corpus_dir) / "ground_truth.json").read_text(encoding="utf-8"))


@click.command("demo-corpus")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("-n", "--n-utterances", default=36, show_default=True, help="Utterances to synthesize.")
@click.option("--seed", default=0, show_default=True, help="Seed for gaps and noise.")
def demo_corpus_command(out: Path, n_utterances: int, seed: int) -> None:
    """Synthesize the demo corpus (espeak-ng, exact word boundaries) into OUT."""
    synthesize_demo_corpus(out, n_utterances=n_utterances, seed=seed)
    truth = load_ground_truth(out)
    hours = sum(u["duration"] for u in truth["utterances"]) / 3600
    speakers = len({u["speaker"] for u in truth["utterances"]})
    click.echo(f"demo corpus: {len(truth['utterances'])} utterances, {speakers} speakers, "
               f"{hours * 60:.1f} min -> {out} (ground truth: {out / 'ground_truth.json'})")


def replicate_corpus(source: str | Path, out_dir: str | Path, copies: int, textgrids: str | Path | None = None) -> int:
    """`copies` copies of a synthesized corpus under new speaker folders (`<speaker>_rNNNN`), audio
    hard-linked, for scale tests and benchmarks; with `textgrids`, a TextGrid of every copy's exact
    word boundaries there too (`align.backend = textgrid` then costs no aligner time).
    Returns the number of utterances written."""
    from lst_data.align.base import Interval
    from lst_data.align.textgrid_io import write_textgrid

    source, out_dir = Path(source), Path(out_dir)
    truth = load_ground_truth(source)
    written = 0
    for copy in range(copies):
        for utt in truth["utterances"]:
            speaker = f"{utt['speaker']}_r{copy:04d}"
            utt_id = f"{utt['id']}_r{copy:04d}"
            folder = out_dir / speaker
            folder.mkdir(parents=True, exist_ok=True)
            audio = folder / f"{utt_id}.wav"
            if not audio.exists():
                audio.hardlink_to(source / utt["audio"])
            (folder / f"{utt_id}.lab").write_text(utt["text"] + "\n", encoding="utf-8")
            if textgrids is not None:
                words = [Interval(w["word"], w["start"], w["end"]) for w in utt["words"]]
                write_textgrid(Path(textgrids) / speaker / f"{utt_id}.TextGrid", utt["duration"], words)
            written += 1
    return written
