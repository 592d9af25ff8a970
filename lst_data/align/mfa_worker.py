"""A long-lived MFA aligner process, run by MFA's own Python interpreter.

MFA needs kalpy-kaldi from conda-forge, so it cannot live in lst-data's environment. The
align backend starts this file as a script under MFA's interpreter (argument list, no
shell) and talks JSON lines over stdin/stdout. It therefore imports nothing from
lst_data, only MFA and kalpy, and it is MFA's in-process path (the one `mfa align_one`
uses): the acoustic model and lexicon FSTs are loaded once, then each utterance costs
tens of milliseconds.

Protocol (one JSON object per line):
  start-up   -> {"ready": true, "mfa_version": ...}    or {"fatal": "..."} then exit 1
  request    <- {"id", "audio", "begin", "end", "text", "pronunciations": {word: "P H O N E S"}}
  response   -> {"id", "words": [{"label", "begin", "end", "phones": [{"label", "begin", "end"}]}],
                 "likelihood"}                          or {"id", "error": "..."}
Transcripts travel inside the JSON on stdin, never on a command line.
"""

from __future__ import annotations

import argparse
import json
import sys


def _load(args: argparse.Namespace):
    from kalpy.aligner import KalpyAligner
    from kalpy.fstext.lexicon import LexiconCompiler
    from montreal_forced_aligner.models import AcousticModel

    acoustic_model = AcousticModel(args.acoustic_model)
    params = acoustic_model.parameters
    lexicon = LexiconCompiler(
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
    lexicon.load_pronunciations(args.dictionary)
    lexicon.create_fsts()
    lexicon.clear()
    aligner = KalpyAligner(acoustic_model, lexicon, beam=args.beam, retry_beam=args.retry_beam)
    return acoustic_model, lexicon, aligner


def _align(request: dict, acoustic_model, lexicon, aligner) -> dict:
    from kalpy.feat.cmvn import CmvnComputer
    from kalpy.fstext.lexicon import Pronunciation
    from kalpy.utterance import Segment, Utterance

    for word, phones in sorted(request.get("pronunciations", {}).items()):
        if not lexicon.word_table.member(word):
            lexicon.add_pronunciation(Pronunciation(word, phones, None, None, None, None, None))
    utterance = Utterance(Segment(request["audio"], request["begin"], request["end"], 0), request["text"])
    utterance.generate_mfccs(acoustic_model.mfcc_computer)
    utterance.apply_cmvn(CmvnComputer().compute_cmvn_from_features([utterance.mfccs]))
    ctm = aligner.align_utterance(utterance)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--acoustic-model", required=True)
    parser.add_argument("--dictionary", required=True)
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--retry-beam", type=int, default=40)
    args = parser.parse_args()
    out = sys.stdout
    sys.stdout = sys.stderr  # MFA and kalpy log to stdout; keep the protocol channel clean
    try:
        models = _load(args)
        import montreal_forced_aligner

        version = getattr(montreal_forced_aligner, "__version__", "unknown")
    except Exception as err:  # noqa: BLE001  (reported to the parent, which raises)
        out.write(json.dumps({"fatal": f"{type(err).__name__}: {err}"}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps({"ready": True, "mfa_version": version}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            response = _align(request, *models)
        except Exception as err:  # noqa: BLE001  (one utterance failed; the parent makes it a reject)
            response = {"id": request.get("id"), "error": f"{type(err).__name__}: {err}"}
        out.write(json.dumps(response) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
