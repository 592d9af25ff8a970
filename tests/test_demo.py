"""The demo corpus's ground truth is exact: checked against the audio itself."""

import numpy as np
import soundfile as sf

from lst_data.demo import load_ground_truth


def test_ground_truth_matches_audio(demo_corpus):
    truth = load_ground_truth(demo_corpus)
    utterances = truth["utterances"]
    assert len(utterances) == 12 and len({u["speaker"] for u in utterances}) == 6
    for utt in utterances:
        audio, rate = sf.read(demo_corpus / utt["audio"], dtype="float32")
        assert rate == 16000 and abs(len(audio) / rate - utt["duration"]) < 1e-6
        assert (demo_corpus / utt["audio"]).with_suffix(".lab").read_text().strip() == utt["text"]
        assert " ".join(w["word"] for w in utt["words"]) == utt["normalized_text"]
        ends = [(w["start"], w["end"]) for w in utt["words"]]
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ends, ends[1:], strict=False))
        # Speech inside every word, only the noise floor inside every pause.
        for w in utt["words"]:
            seg = audio[int(w["start"] * rate) : int(w["end"] * rate)]
            assert np.abs(seg).max() > 0.05, (utt["id"], w)
        for p in utt["pauses"]:
            seg = audio[int(p["start"] * rate) + 1 : int(p["end"] * rate) - 1]
            assert np.abs(seg).max() < 0.02, (utt["id"], p)
        assert utt["pauses"][0]["kind"] == "leading" and utt["pauses"][-1]["kind"] == "trailing"
    assert sum(p["kind"] == "comma" for u in utterances for p in u["pauses"]) >= 3


def test_demo_corpus_is_deterministic(tmp_path):
    from lst_data.demo import synthesize_demo_corpus

    a = synthesize_demo_corpus(tmp_path / "a", n_utterances=2)
    b = synthesize_demo_corpus(tmp_path / "b", n_utterances=2)
    for wav in sorted(a.rglob("*.wav")):
        assert wav.read_bytes() == (b / wav.relative_to(a)).read_bytes()
