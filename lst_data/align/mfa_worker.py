"""A long-lived MFA aligner process, run by MFA's own Python interpreter.

MFA needs kalpy-kaldi, so it cannot live in lst-data's environment. The align backend
starts this file as a script under MFA's interpreter (argument list, no shell) and talks
JSON lines over stdin/stdout. It therefore imports nothing from lst_data, only MFA and
kalpy, and it is MFA's in-process path (the one `mfa align_one` uses): the acoustic model
is loaded once, then each utterance costs tens of milliseconds.

Protocol (one JSON object per line):
  start-up   -> {"ready": true, "mfa_version": ..., "phones": [...]}   or {"fatal": "..."} then exit 1
  request    <- {"lexicon": {word: ["P H O N E S", ...]},          every word of the utterances
                 "utterances": [{"id", "audio", "begin", "end", "text"}],       aligned, in order
                 "cmvn_from": [{"audio", "begin", "end"}, ...]}   segments whose features give the
                                                                  CMVN stats (one speaker's batch),
                                                                  or [] for per-utterance CMVN
  response   -> {"results": [{"id", "words": [{"label", "begin", "end",
                                             "phones": [{"label", "begin", "end"}]}], "likelihood"}
                             or {"id", "error": "..."}, ...]}
Transcripts travel inside the JSON on stdin, never on a command line.

The lexicon FST is compiled when a request brings words it lacks, *before* the aligner
that uses it is built: kalpy's graph compiler keeps its own copy of L.fst, so a word added
to a lexicon after the aligner exists is missing from the graph (Kaldi aborts the process).
Words outside the request never enter its decoding graph, so the lexicon's extra words do
not change an utterance's alignment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kalpy.aligner import KalpyAligner
    from kalpy.fstext.lexicon import LexiconCompiler


class Worker:
    def __init__(self, acoustic_model_path: str, beam: int, retry_beam: int) -> None:
        from montreal_forced_aligner.models import AcousticModel

        self.acoustic_model = AcousticModel(Path(acoustic_model_path))
        self.beam, self.retry_beam = beam, retry_beam
        self.pronunciations: dict[str, list[str]] = {}
        self.lexicon: LexiconCompiler | None = None
        self.aligner: KalpyAligner | None = None  # built by `use_lexicon`, before the first utterance

    @property
    def phones(self) -> list[str]:
        return sorted(self.acoustic_model.parameters["non_silence_phones"])

    def use_lexicon(self, lexicon: dict[str, list[str]]) -> None:
        """Compile L.fst for every word seen so far, then build the aligner on it."""
        from kalpy.aligner import KalpyAligner
        from kalpy.fstext.lexicon import LexiconCompiler, Pronunciation

        new = {w: p for w, p in lexicon.items() if w not in self.pronunciations}
        if not new and self.aligner is not None:
            return
        self.pronunciations.update(new)
        params = self.acoustic_model.parameters
        compiler = LexiconCompiler(
            disambiguation=False,
            silence_probability=params["silence_probability"],
            initial_silence_probability=params["initial_silence_probability"],
            final_silence_correction=params["final_silence_correction"],
            final_non_silence_correction=params["final_non_silence_correction"],
            silence_phone=params["optional_silence_phone"],
            oov_phone=params["oov_phone"],
            position_dependent_phones=params["position_dependent_phones"],
            phones=params["non_silence_phones"],
            ignore_case=True,
        )
        for word in sorted(self.pronunciations):
            compiler.word_table.add_symbol(word)
        compiler.pronunciations.append(Pronunciation(compiler.oov_word, compiler.oov_phone, 1.0, None, None, None, None))
        for word in sorted(self.pronunciations):
            for phones in self.pronunciations[word]:
                compiler.pronunciations.append(Pronunciation(word, phones, None, None, None, None, None))
        compiler.compute_disambiguation_symbols()
        compiler.create_fsts()
        compiler.clear()
        self.lexicon = compiler
        self.aligner = KalpyAligner(self.acoustic_model, compiler, beam=self.beam, retry_beam=self.retry_beam)

    def cmvn(self, segments: list[dict]):
        from kalpy.feat.cmvn import CmvnComputer

        utterances = [self._utterance(s, "") for s in segments]
        return CmvnComputer().compute_cmvn_from_features([u.mfccs for u in utterances])

    def _utterance(self, request: dict, text: str):
        from kalpy.utterance import Segment, Utterance

        utterance = Utterance(Segment(request["audio"], request["begin"], request["end"], 0), text)
        utterance.generate_mfccs(self.acoustic_model.mfcc_computer)
        return utterance

    def align(self, request: dict, cmvn) -> dict:
        if self.aligner is None:
            raise RuntimeError("no aligner: `use_lexicon` builds it before the first utterance")
        utterance = self._utterance(request, request["text"])
        utterance.apply_cmvn(cmvn if cmvn is not None else self.cmvn([request]))
        ctm = self.aligner.align_utterance(utterance)
        return {
            "id": request["id"],
            "likelihood": ctm.likelihood,
            "words": [
                {
                    "label": word.label,
                    "begin": word.begin,
                    "end": word.end,
                    "phones": [{"label": p.label, "begin": p.begin, "end": p.end} for p in word.phones],
                }
                for word in ctm.word_intervals
            ],
        }

    def handle(self, request: dict) -> dict:
        self.use_lexicon(request.get("lexicon", {}))
        cmvn = self.cmvn(request["cmvn_from"]) if request.get("cmvn_from") else None
        results = []
        for utterance in request["utterances"]:
            try:
                results.append(self.align(utterance, cmvn))
            except Exception as err:  # noqa: BLE001  (one utterance failed; the parent makes it a reject)
                results.append({"id": utterance.get("id"), "error": f"{type(err).__name__}: {err}"})
        return {"results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--acoustic-model", required=True)
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--retry-beam", type=int, default=40)
    parser.add_argument("--remove-on-exit", help="a folder (this worker's MFA_ROOT_DIR) to delete when stdin ends")
    args = parser.parse_args()
    out = sys.stdout
    sys.stdout = sys.stderr  # MFA and kalpy log to stdout; keep the protocol channel clean
    try:
        from montreal_forced_aligner.utils import get_mfa_version

        worker = Worker(args.acoustic_model, args.beam, args.retry_beam)
        hello = {"ready": True, "mfa_version": get_mfa_version(), "phones": worker.phones}
    except Exception as err:  # noqa: BLE001  (reported to the parent, which raises)
        out.write(json.dumps({"fatal": f"{type(err).__name__}: {err}"}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps(hello) + "\n")
    out.flush()
    for line in sys.stdin:
        if line.strip():
            out.write(json.dumps(worker.handle(json.loads(line))) + "\n")
            out.flush()
    if args.remove_on_exit:
        shutil.rmtree(args.remove_on_exit, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
