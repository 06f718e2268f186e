"""POPE, as `llava/eval/eval_pope.py`: per category accuracy, precision, recall, F1 and yes ratio (fractions).

Quirks kept: answers pair with a category's labels by position (annotation ids are never read); unequal
counts truncate to the shorter while the yes ratio divides by every answer; only the text before the first
`.` is parsed, commas deleted, split on single spaces, and only the tokens `No`, `not`, `no` mean no.
One deviation: where the official script divides by zero (no "yes" prediction or no "yes" label in a
category), precision / recall / F1 are reported as null instead of crashing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lphi_edge.errors import EvalInputError
from lphi_edge.eval.io import at, read_jsonl

PREFIX, SUFFIX = "coco_pope_", ".json"


def pope_says_yes(text: str) -> bool:
    """The official parse of one answer."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return not ("No" in words or "not" in words or "no" in words)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def score_pope(questions: str | Path, answers: str | Path, annotation_dir: str | Path) -> dict[str, Any]:
    category_of = {q["question_id"]: q["category"] for q in read_jsonl(questions, ("question_id", "category"))}
    records = read_jsonl(answers, ("question_id", "text"))
    for rec in records:
        if rec["question_id"] not in category_of:
            raise EvalInputError(f"{at(answers, rec)}: question_id {rec['question_id']!r} not in {questions}")
    files = sorted(Path(annotation_dir).iterdir()) if Path(annotation_dir).is_dir() else None
    if not files:
        raise EvalInputError(f"{annotation_dir}: expected a directory of {PREFIX}<category>{SUFFIX} files")
    metrics: dict[str, dict[str, Any]] = {}
    for f in files:
        if not (f.name.startswith(PREFIX) and f.name.endswith(SUFFIX)):
            raise EvalInputError(f"{annotation_dir} must hold only {PREFIX}<category>{SUFFIX} files, found {f.name}")
        category = f.name[len(PREFIX) : -len(SUFFIX)]
        labels = [rec["label"] == "yes" for rec in read_jsonl(f, ("label",))]  # JSONL despite the extension
        preds = [pope_says_yes(r["text"]) for r in records if category_of[r["question_id"]] == category]
        if not preds:
            raise EvalInputError(f"{answers}: no answers in category {category!r}")
        tp = sum(p and t for p, t in zip(preds, labels))
        fp = sum(p and not t for p, t in zip(preds, labels))
        tn = sum(not p and not t for p, t in zip(preds, labels))
        fn = sum(not p and t for p, t in zip(preds, labels))
        precision, recall = _ratio(float(tp), float(tp + fp)), _ratio(float(tp), float(tp + fn))
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else None
        metrics[category] = {
            "accuracy": (tp + tn) / (tp + tn + fp + fn),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "yes_ratio": preds.count(True) / len(preds),
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "samples": len(preds),
        }
    return metrics
