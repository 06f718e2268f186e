"""MMBench: option accuracy from a run over the MMBench TSV (single pass, or circular over the rotated
rounds LLaVA's `--all-rounds` writes), and the submission sheet for the evaluation server.

Answers carry `question_id` = the TSV `index`; a run with rotations also carries `round_id` and the
round's `options` (their texts in shown order), so a round is right when the chosen option's text is the
right answer's text.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

from lphi_edge.errors import EvalInputError
from lphi_edge.eval.io import at, read_jsonl

LETTERS = "ABCD"


def read_mmbench(path: str | Path) -> dict[int, dict[str, str]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as e:
        raise EvalInputError(f"cannot read {path}: {e.strerror or e}") from None
    if not rows or not {"index", "question", "A", "B"} <= set(rows[0]):
        raise EvalInputError(f"{path}: expected the MMBench TSV (index, question, A, B, [C, D], answer, category)")
    return {int(r["index"]): r for r in rows}


def mmbench_letter(text: str) -> str:
    t = text.strip()
    return t[0] if t[:1] in LETTERS and (len(t) == 1 or not t[1].isalpha()) else ""


def score_mmbench(questions: str | Path, answers: str | Path, circular: bool = False) -> dict[str, Any]:
    table = read_mmbench(questions)
    rounds: dict[int, list[bool]] = defaultdict(list)
    sheet = []
    for rec in read_jsonl(answers, ("question_id", "text")):
        row = table.get(int(rec["question_id"]))
        if row is None:
            raise EvalInputError(f"{at(answers, rec)}: question_id {rec['question_id']!r} not in {questions}")
        if not row.get("answer"):
            raise EvalInputError(f"{questions}: index {row['index']} has no answer (test split: submit the sheet)")
        shown = rec.get("options") or [row[c] for c in LETTERS if row.get(c)]
        letter = mmbench_letter(rec["text"])
        chosen = shown[LETTERS.index(letter)] if letter and LETTERS.index(letter) < len(shown) else None
        rounds[int(rec["question_id"])].append(chosen is not None and chosen == row[row["answer"]])
        if rec.get("round_id", 0) == 0:
            sheet.append({**{k: v for k, v in row.items()}, "prediction": rec["text"]})
    if not rounds:
        raise EvalInputError(f"{answers}: no answers")
    single = sum(r[0] for r in rounds.values()) / len(rounds)
    out = {"accuracy": 100.0 * single, "samples": len(rounds), "_files": {"submission": sheet}}
    if circular:
        out["circular_accuracy"] = 100.0 * sum(all(r) for r in rounds.values()) / len(rounds)
    return out
