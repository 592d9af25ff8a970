"""The MFA backend against a real Montreal Forced Aligner 3.4.3 (`make setup-mfa`), all modes.

MFA runs from `.venv-mfa` with the acoustic model trained on the demo corpus that
`make setup-mfa` saves under the name `demo160_english_arpa` (from ../shared/mfa). Without
`.venv-mfa` every test here is skipped with the reason; `make test-mfa` (CI) sets
LST_DATA_REQUIRE_MFA=1, which turns that skip into a failure.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.alignment_scores import evaluate_alignments

from lst_data.align.base import AlignFailure, Alignment, AlignRequest
from lst_data.align.config import AlignConfig, MfaConfig
from lst_data.align.mfa_install import MfaUnavailable, mfa_missing
from lst_data.config import load_config
from lst_data.demo import load_ground_truth
from lst_data.ingest.stage import ingest_corpus

MODEL = "demo160_english_arpa"  # saved into .venv-mfa/mfa_root by `make setup-mfa`


_MISSING = mfa_missing()
if _MISSING and os.environ.get("LST_DATA_REQUIRE_MFA"):
    raise RuntimeError(f"LST_DATA_REQUIRE_MFA is set but MFA is missing: {_MISSING}")
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"MFA not installed (`make setup-mfa`): {_MISSING}")

# The number of words no 3-second clip can hold (each phone needs 3 frames of 10 ms).
UNALIGNABLE_TEXT = " ".join(["the"] * 80)


@pytest.fixture(scope="module")
def manifest(demo_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mfa_manifest")
    ingest_corpus(demo_corpus, out, load_config(overrides={"ray": {"runner": "local"}}))
    return out


def mfa_config(tmp_path: Path, **mfa) -> dict:
    return {"ray": {"runner": "local", "batch_size": 16},
            "align": {"backend": "mfa", "mfa": {"acoustic_model": MODEL, "root_dir": str(tmp_path / "roots"), **mfa}}}


def align(manifest_dir: Path, out: Path, overrides: dict):
    from lst_data.align.stage import align_manifest

    return align_manifest(manifest_dir, out, load_config(overrides=overrides))


def with_unalignable_utterance(manifest_dir: Path, out: Path) -> Path:
    """The manifest plus one utterance whose transcript cannot fit its audio."""
    table = pq.read_table(manifest_dir / "manifest.parquet")
    bad = {**table.slice(0, 1).to_pylist()[0], "id": "unalignable", "key": "unalignable",
           "text": UNALIGNABLE_TEXT, "normalized_text": UNALIGNABLE_TEXT}
    out.mkdir()
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([bad], schema=table.schema)]), out / "manifest.parquet")
    return out


def requests_of(manifest_dir: Path) -> list[AlignRequest]:
    return [AlignRequest.from_row(r) for r in pq.read_table(manifest_dir / "manifest.parquet").to_pylist()]


def test_worker_mode_aligns_the_demo_corpus_accurately(manifest, demo_corpus, tmp_path):
    """The default mode, with a named model resolved through the shared pretrained root and a
    root_dir that does not exist yet; nothing is left in it afterwards."""
    assert MfaConfig().mode == "worker"
    report = align(manifest, tmp_path / "a", mfa_config(tmp_path))
    assert report.rows_out == 12, [(r.id, r.detail) for r in report.rejects]
    scores = evaluate_alignments(report.read_output().to_pylist(), load_ground_truth(demo_corpus))
    # Measured 91.2 % on 40 utterances with the edge extension, 72.4 % without it.
    assert scores.within[0.05] >= 0.85 and scores.pauses_found == scores.pauses
    provenance = (tmp_path / "a" / "align.json").read_text()
    assert '"mode": "worker"' in provenance and MODEL in provenance
    assert list((tmp_path / "roots").iterdir()) == []  # the worker's MFA root went with it
    again = align(manifest, tmp_path / "b", mfa_config(tmp_path))
    assert again.read_output().equals(report.read_output())  # same inputs and config, same alignments


def test_edge_extension_gives_words_back_their_audible_edges(manifest, demo_corpus, tmp_path):
    """MFA alone puts onsets of "the" ~90 ms late on this model; the extension fixes them."""
    truth = {u["id"]: u for u in load_ground_truth(demo_corpus)["utterances"]}
    late = {}
    for name, extend in (("plain", 0.0), ("extended", 0.15)):
        rows = align(manifest, tmp_path / name, mfa_config(tmp_path, extend_edges=extend)).read_output().to_pylist()
        onsets = [w["start"] - t["start"] for r in rows for w, t in zip(r["words"], truth[r["id"]]["words"], strict=True)
                  if t["word"] == "the"]
        late[name] = sorted(onsets)[len(onsets) // 2]
    assert late["plain"] > 0.05 and abs(late["extended"]) < 0.02, late


def test_worker_adds_oov_pronunciations_before_aligning(manifest, tmp_path):
    """A dictionary without one of the corpus's words: its fallback (cmudict package) reaches
    a worker already running, is compiled into its lexicon before the aligner that uses it
    is built, so nothing dies and nothing restarts (MFA 3.4.3's add_pronunciation after the
    aligner existed killed the process with SIGABRT)."""
    from lst_data.align.lexicon import cmudict_entries
    from lst_data.align.mfa_backend import MfaAligner

    requests = requests_of(manifest)
    vocabulary = sorted({w for r in requests for w in r.words})
    missing = next(w for w in vocabulary if len(cmudict_entries()[w]) == 1 and 0 < sum(w in r.words for r in requests) < 4)
    (tmp_path / "partial.dict").write_text(
        "".join(f"{w}\t{' '.join(p)}\n" for w in vocabulary if w != missing for p in cmudict_entries()[w]))
    aligner = MfaAligner(AlignConfig(backend="mfa", mfa=MfaConfig(acoustic_model=MODEL, dictionary=str(tmp_path / "partial.dict"))))
    without = [r for r in requests if missing not in r.words]
    with_it = [r for r in requests if missing in r.words]
    try:
        first = aligner.align_batch(without)
        process = aligner.worker.process
        second = aligner.align_batch(with_it)
        assert aligner.worker.process is process  # no restart
    finally:
        aligner.close()
    # A speaker with one utterance in a batch gets that utterance's own CMVN, which this model
    # aligns less well: one beam failure is allowed, a dead worker is not.
    aligned = [o for o in second if isinstance(o, Alignment)]
    assert len(aligned) >= len(with_it) - 1 and sum(isinstance(o, Alignment) for o in first) >= len(without) - 1
    assert not [o for o in first + second if isinstance(o, AlignFailure) and "died" in o.detail]
    assert aligned and all([(x.word, x.source) for x in o.oov] == [(missing, "cmudict")] for o in aligned)


def test_worker_dictionary_holds_only_the_utterances_words(manifest):
    from lst_data.align.mfa_backend import MfaAligner

    aligner = MfaAligner(AlignConfig(backend="mfa", mfa=MfaConfig(acoustic_model=MODEL)))
    request = requests_of(manifest)[0]
    lexicon = aligner.utterance_lexicon(request)
    assert set(lexicon.pronunciations) == set(request.words)
    assert all(set(p.split()) <= aligner.model_phones for prons in lexicon.pronunciations.values() for p in prons)
    assert aligner.worker is None  # no process until there is something to align


def test_worker_that_dies_is_restarted_and_a_silent_one_times_out(manifest, tmp_path):
    from lst_data.align.mfa_backend import MfaAligner

    requests = requests_of(manifest)
    aligner = MfaAligner(AlignConfig(backend="mfa", mfa=MfaConfig(acoustic_model=MODEL, root_dir=str(tmp_path))))
    try:
        assert isinstance(aligner.align_batch(requests[:1])[0], Alignment)
        os.kill(aligner.worker.process.pid, signal.SIGKILL)
        outcomes = aligner.align_batch(requests[1:4])  # a fresh worker takes over
        assert all(isinstance(o, Alignment) for o in outcomes), outcomes
    finally:
        aligner.close()
    assert list(tmp_path.iterdir()) == []
    impatient = MfaAligner(AlignConfig(backend="mfa", mfa=MfaConfig(acoustic_model=MODEL, worker_timeout=0.05)))
    with pytest.raises(RuntimeError, match="worker_timeout"):
        impatient.align_batch(requests[:1])


def test_batch_mode_rejects_what_mfa_cannot_align(manifest, demo_corpus, tmp_path):
    """`mfa align` per batch: an utterance MFA leaves out becomes a reject, the others align;
    a run where MFA aligns nothing (NoAlignmentsError, exit 1) rejects its utterances with
    MFA's reason instead of failing the build; no work folder is left behind either way."""
    manifest_dir = with_unalignable_utterance(manifest, tmp_path / "m")
    report = align(manifest_dir, tmp_path / "a", mfa_config(tmp_path, mode="batch") | {"ray": {"runner": "local", "batch_size": 13}})
    assert [(r.id, r.code) for r in report.rejects] == [("unalignable", "align_failed")]
    assert "missing from MFA's output" in report.rejects[0].detail
    scores = evaluate_alignments(report.read_output().to_pylist(), load_ground_truth(demo_corpus))
    assert report.rows_out == 12 and scores.within[0.05] >= 0.85 and scores.pauses_found == scores.pauses

    from lst_data.align.mfa_backend import MfaAligner

    aligner = MfaAligner(AlignConfig(backend="mfa", mfa=MfaConfig(mode="batch", acoustic_model=MODEL,
                                                                  root_dir=str(tmp_path / "roots"))))
    [outcome] = aligner.align_batch([r for r in requests_of(manifest_dir) if r.id == "unalignable"])
    assert isinstance(outcome, AlignFailure) and outcome.code == "align_failed"
    assert "no successful alignments" in outcome.detail
    assert list((tmp_path / "roots").iterdir()) == []


TRAIN_CONFIG = """\
# A small model for a handful of utterances: monophones only, few iterations.
training:
  - monophone:
      num_iterations: 10
      max_gaussians: 250
      subset: 0
"""


def test_train_mode_trains_on_the_manifest_then_aligns_with_it(manifest, tmp_path):
    table = pq.read_table(manifest / "manifest.parquet").slice(0, 6)
    (tmp_path / "m").mkdir()
    pq.write_table(table, tmp_path / "m" / "manifest.parquet")
    (tmp_path / "train.yaml").write_text(TRAIN_CONFIG)
    overrides = mfa_config(tmp_path, mode="train", acoustic_model=None, train_config=str(tmp_path / "train.yaml"))
    report = align(tmp_path / "m", tmp_path / "a", overrides)
    model = tmp_path / "a" / "mfa_acoustic_model.zip"
    assert model.is_file()
    assert report.rows_out + len(report.rejects) == 6 and report.rows_out >= 4
    provenance = (tmp_path / "a" / "align.json").read_text()
    assert '"mode": "train"' in provenance and str(model) in provenance
    assert list((tmp_path / "roots").iterdir()) == []


def test_unknown_model_name_is_a_config_error_naming_the_field(tmp_path):
    from lst_data.align.mfa_backend import check_mfa_config

    with pytest.raises(MfaUnavailable, match="align.mfa.acoustic_model 'no_such_model'"):
        check_mfa_config(MfaConfig(acoustic_model="no_such_model"))
