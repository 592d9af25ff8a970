"""CTC backend (torchaudio forced_align). No CTC weights can be downloaded here, so the
main tests build a small *randomly initialised* wav2vec2 CTC model in the test and check
the structure of its alignments (monotonic, inside the audio, one interval per word and
character), not their accuracy. A real checkpoint is tested when LST_DATA_CTC_CHECKPOINT
names one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lst_data.align.config import AlignConfig, CtcConfig  # noqa: E402
from lst_data.align.stage import AlignStage  # noqa: E402
from lst_data.audio import write_audio  # noqa: E402
from lst_data.format.schema import validation_errors  # noqa: E402

RATE = 16000
VOCAB = ["<blank>", "|", "'", *"abcdefghijklmnopqrstuvwxyz"]


@pytest.fixture(scope="module")
def random_ctc_checkpoint(tmp_path_factory) -> Path:
    """A tiny wav2vec2 CTC model with random weights, in the lst-data checkpoint format."""
    from torchaudio.models import wav2vec2_model

    torch.manual_seed(0)
    arguments = {
        "extractor_mode": "group_norm",
        # wav2vec2's strides (5*2*2*2*2*2*2 = 320 samples = 20 ms), with 16 channels.
        "extractor_conv_layer_config": [[16, 10, 5]] + [[16, 3, 2]] * 4 + [[16, 2, 2]] * 2,
        "extractor_conv_bias": False, "encoder_embed_dim": 32, "encoder_projection_dropout": 0.0,
        "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4, "encoder_num_layers": 1,
        "encoder_num_heads": 2, "encoder_attention_dropout": 0.0, "encoder_ff_interm_features": 64,
        "encoder_ff_interm_dropout": 0.0, "encoder_dropout": 0.0, "encoder_layer_norm_first": False,
        "encoder_layer_drop": 0.0, "aux_num_out": len(VOCAB),
    }
    directory = tmp_path_factory.mktemp("ctc_random")
    torch.save(wav2vec2_model(**arguments).state_dict(), directory / "model.pt")
    config = {"format": "lst-data-ctc", "model": arguments, "vocab": VOCAB, "blank": 0, "word_delimiter": "|", "lowercase": True}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def write_as_huggingface(lst_checkpoint: Path, folder: Path) -> Path:
    """The same random model in the layout of a Hugging Face Wav2Vec2ForCTC folder."""
    from hf_layout import hf_config, write_hf_folder  # tests/ is on sys.path under pytest

    config = json.loads((lst_checkpoint / "config.json").read_text())
    hf = hf_config(config["model"], model_type="wav2vec2", architectures=["Wav2Vec2ForCTC"],
                   vocab_size=len(config["vocab"]), pad_token_id=0)
    write_hf_folder(folder, hf, torch.load(lst_checkpoint / "model.pt", weights_only=True), prefix="wav2vec2.")
    (folder / "vocab.json").write_text(json.dumps({("<pad>" if t == "<blank>" else t): i for i, t in enumerate(config["vocab"])}))
    return folder


def test_huggingface_ctc_folder_loads_without_transformers(random_ctc_checkpoint, tmp_path):
    """Weights only, through lst_data.ssl_checkpoints: the logits must be the original model's."""
    from lst_data.align.ctc_backend import load_ctc_checkpoint

    hf_folder = write_as_huggingface(random_ctc_checkpoint, tmp_path / "hf")
    original, original_vocab = load_ctc_checkpoint(random_ctc_checkpoint)
    converted, vocab = load_ctc_checkpoint(hf_folder)
    wave = torch.randn(1, 16000)
    with torch.inference_mode():
        torch.testing.assert_close(converted(wave)[0], original(wave)[0], rtol=0, atol=1e-5)
    assert vocab.blank == original_vocab.blank == 0
    text = "the cat sat"
    row = audio_row(tmp_path, "u", text, 1.5)
    from_hf = ctc_stage(hf_folder).process_batch([row]).rows[0]
    from_lst = ctc_stage(random_ctc_checkpoint).process_batch([row]).rows[0]
    assert from_hf["words"] == from_lst["words"] and from_hf["chars"] == from_lst["chars"]


def audio_row(tmp_path: Path, utt_id: str, text: str, seconds: float) -> dict:
    t = np.arange(int(seconds * RATE)) / RATE
    signal = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    path = tmp_path / f"{utt_id}.wav"
    write_audio(path, signal, RATE)
    return {"id": utt_id, "key": utt_id, "audio_path": str(path), "duration": seconds, "speaker": "s",
            "normalized_text": text}


def ctc_stage(checkpoint: Path, **kwargs) -> AlignStage:
    return AlignStage(AlignConfig(backend="ctc", ctc=CtcConfig(checkpoint=str(checkpoint), device="cpu"), **kwargs))


def test_random_ctc_model_gives_well_formed_word_and_char_intervals(random_ctc_checkpoint, tmp_path):
    text = "the cat's hat sat on a mat"
    result = ctc_stage(random_ctc_checkpoint).process_batch([audio_row(tmp_path, "u", text, 2.5)])
    assert result.rejects == []
    row = result.rows[0]
    assert validation_errors(row, "alignment") == []
    assert row["backend"] == "ctc" and row["phones"] == [] and row["oov"] == []
    assert [w["word"] for w in row["words"]] == text.split()
    letters = [(c, i) for i, word in enumerate(text.split()) for c in word]
    assert [(c["char"], c["word_index"]) for c in row["chars"]] == letters  # one interval per character
    starts = [c["start"] for c in row["chars"]]
    assert starts == sorted(starts)
    assert all(0.0 <= c["start"] <= c["end"] <= 2.5 for c in row["chars"])
    for index, word in enumerate(row["words"]):
        mine = [c for c in row["chars"] if c["word_index"] == index]
        assert word["start"] == mine[0]["start"] and word["end"] == mine[-1]["end"]
        assert 0.0 <= word["start"] <= word["end"] <= 2.5
    ends = [t for w in row["words"] for t in (w["start"], w["end"])]
    assert ends == sorted(ends)
    assert isinstance(row["score"], float) and row["score"] <= 0.0  # mean log-probability


def test_ctc_vocabulary_gaps_are_recorded_or_rejected(random_ctc_checkpoint, tmp_path):
    rows = [audio_row(tmp_path, "accent", "a naïve cat", 2.0), audio_row(tmp_path, "foreign", "a 日本 cat", 2.0)]
    result = ctc_stage(random_ctc_checkpoint).process_batch(rows)
    assert [r["id"] for r in result.rows] == ["accent"]
    row = result.rows[0]
    assert row["oov"] == [{"word": "naïve", "source": "ctc_vocab"}]
    assert [c["char"] for c in row["chars"] if c["word_index"] == 1] == list("nave")  # ï is skipped
    assert [(r.id, r.code) for r in result.rejects] == [("foreign", "oov")]

    strict = ctc_stage(random_ctc_checkpoint, oov="reject").process_batch(rows[:1])
    assert [(r.id, r.code) for r in strict.rejects] == [("accent", "oov")]


def test_audio_too_short_for_the_transcript_is_align_failed(random_ctc_checkpoint, tmp_path):
    row = audio_row(tmp_path, "short", "a very long transcript for a tiny bit of audio", 0.3)  # 15 frames
    result = ctc_stage(random_ctc_checkpoint).process_batch([row])
    assert result.rows == [] and [(r.id, r.code) for r in result.rejects] == [("short", "align_failed")]


@pytest.mark.skipif(not os.environ.get("LST_DATA_CTC_CHECKPOINT"),
                    reason="no CTC checkpoint (set LST_DATA_CTC_CHECKPOINT to a checkpoint directory)")
def test_real_ctc_checkpoint_aligns_demo_corpus(demo_corpus, tmp_path):
    from support.alignment_scores import evaluate_alignments

    from lst_data.align.stage import align_manifest
    from lst_data.config import load_config
    from lst_data.demo import load_ground_truth
    from lst_data.ingest.stage import ingest_corpus

    config = load_config(overrides={"ray": {"runner": "local"},
                                    "align": {"backend": "ctc", "ctc": {"checkpoint": os.environ["LST_DATA_CTC_CHECKPOINT"]}}})
    ingest_corpus(demo_corpus, tmp_path / "m", config)
    report = align_manifest(tmp_path / "m", tmp_path / "a", config)
    scores = evaluate_alignments(report.read_output().to_pylist(), load_ground_truth(demo_corpus))
    assert scores.utterances > 0 and scores.within[0.1] >= 0.5
