"""ScienceQA, as `llava/eval/eval_science_qa.py` (LLaVA c121f04): accuracy and IMG accuracy in percent,
plus the official output files.

Extraction kept exactly: the text is one of A–E; else `X. ...` (X in A–E, at least 3 characters); else
exactly one match of `The answer is ([A-Z]).` (which needs a character after the letter); anything else
FAILED. A letter beyond the choices scores as index −1. A missing prediction counts (FAILED, prompt
"Unknown", so never IMG); a later duplicate answer line wins.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lphi_edge.errors import EvalInputError
from lphi_edge.eval.io import answers_by_id, read_json

OPTIONS = ["A", "B", "C", "D", "E"]
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def sqa_letter(text: str) -> str:
    """The official extraction: a letter, or FAILED."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def score_sqa(problems_dir: str | Path, answers: str | Path, split: str = "test") -> dict[str, Any]:
    base = Path(problems_dir)
    splits, problems = read_json(base / "pid_splits.json"), read_json(base / "problems.json")
    if split not in splits:
        raise EvalInputError(f"{base / 'pid_splits.json'} has no split {split!r} (has {sorted(splits)})")
    preds = answers_by_id(answers)
    correct, incorrect, results, outputs = [], [], {}, {}
    for pid in splits[split]:
        if pid not in problems:
            raise EvalInputError(f"{base / 'problems.json'}: no problem {pid!r} (listed in split {split!r})")
        prob = problems[pid]
        pred = preds.get(pid, {"text": "FAILED", "prompt": "Unknown"})
        letter = sqa_letter(pred["text"])
        idx = OPTIONS.index(letter) if letter in OPTIONS[: len(prob["choices"])] else -1
        record = {
            "question_id": pid,
            "parsed_ans": letter,
            "ground_truth": OPTIONS[prob["answer"]],
            "question": pred.get("prompt", ""),
            "pred": pred["text"],
            "is_multimodal": "<image>" in pred.get("prompt", ""),
        }
        results[pid], outputs[pid] = idx, pred["text"]
        (correct if idx == prob["answer"] else incorrect).append(record)
    total = len(correct) + len(incorrect)
    img_right = sum(r["is_multimodal"] for r in correct)
    img_total = img_right + sum(r["is_multimodal"] for r in incorrect)
    if not total or not img_total:
        raise EvalInputError(f"split {split!r}: {total} problems, {img_total} with an image prompt: nothing to score")
    acc = len(correct) / total * 100
    return {
        "accuracy": acc,
        "img_accuracy": img_right / img_total * 100,
        "correct": len(correct),
        "count": total,
        "_files": {
            "output_file": {"correct": correct, "incorrect": incorrect},
            "output_result": {
                "acc": acc,
                "correct": len(correct),
                "count": total,
                "results": results,
                "outputs": outputs,
            },  # fmt: skip
        },
    }
