"""The spoken forms of two normalisers against hand-written references.

`benchmarks/data/spoken_forms.tsv` holds real-world written strings (times, money, numbers,
units, abbreviations, symbols) and what a reader says, written by hand: `(w)` marks an
optional word, ` || ` separates equally right readings. Both normalisers end in the same
word rules (`lst_data.text.normalize_text`: case, punctuation, hyphens), so only their
number and symbol handling is compared:

- `rules`: the hand rules of `lst_data.text` (`ingest.normalizer: rules`);
- `nemo`: NeMo's WFST text normaliser (`nemo_text_processing`, grammars on pynini), then the
  same word rules (`ingest.normalizer: nemo`).

Prints the accuracy of each and, with `--table`, a Markdown table of every string where
they differ (docs/ingest.md holds it). Not a timed test: it also prints each one's time.
"""

from __future__ import annotations

import argparse
import itertools
import re
import time
from pathlib import Path

DATA = Path(__file__).parent / "data" / "spoken_forms.tsv"


def readings(reference: str) -> set[str]:
    """Every right reading of a reference: each `(w)` taken or left out, each ` || ` branch."""
    found = set()
    for branch in reference.split(" || "):
        words = branch.split()
        optional = [i for i, w in enumerate(words) if w.startswith("(") and w.endswith(")")]
        for keep in itertools.product([True, False], repeat=len(optional)):
            kept = dict(zip(optional, keep, strict=True))
            found.add(" ".join(w.strip("()") for i, w in enumerate(words) if kept.get(i, True)))
    return found


def load(path: Path = DATA) -> list[tuple[str, set[str]]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        written, reference = line.split("\t")
        rows.append((written, readings(reference)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", action="store_true", help="print the Markdown table of the strings they differ on")
    args = parser.parse_args()
    from lst_data.text import normalize_text

    rows = load()
    results = {}
    for name in ("rules", "nemo"):
        started = time.perf_counter()
        outputs = [normalize_text(written, normalizer=name).text for written, _ in rows]
        seconds = time.perf_counter() - started
        right = [output in refs for output, (_, refs) in zip(outputs, rows, strict=True)]
        results[name] = (outputs, right)
        print(f"{name}: {sum(right)} of {len(rows)} right ({sum(right) / len(rows):.1%}), "
              f"{1000 * seconds / len(rows):.2f} ms a string")
    rules, nemo = results["rules"], results["nemo"]
    print(f"rules_vs_nemo_accuracy: ratio {sum(rules[1]) / max(1, sum(nemo[1])):.2f}; both right {sum(a and b for a, b in zip(rules[1], nemo[1], strict=True))}, "
          f"only rules {sum(a and not b for a, b in zip(rules[1], nemo[1], strict=True))}, "
          f"only nemo {sum(b and not a for a, b in zip(rules[1], nemo[1], strict=True))}, "
          f"neither {sum(not a and not b for a, b in zip(rules[1], nemo[1], strict=True))}")
    if args.table:
        print("\n| written | rules | nemo | right |\n|---|---|---|---|")
        for i, (written, _) in enumerate(rows):
            if rules[0][i] == nemo[0][i]:
                continue
            verdict = "both" if rules[1][i] and nemo[1][i] else "rules" if rules[1][i] else "nemo" if nemo[1][i] else "neither"
            cell = re.sub(r"\|", "/", written)
            print(f"| `{cell}` | {rules[0][i]} | {nemo[0][i]} | {verdict} |")


if __name__ == "__main__":
    main()
