"""GQA: LLaVA's converter (prediction = text.rstrip('.').lower()) and the official exact-match accuracy
against the balanced question file's `answer`, in percent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lphi_edge.errors import EvalInputError
from lphi_edge.eval.io import at, read_json, read_jsonl


def gqa_prediction(text: str) -> str:
    return text.rstrip(".").lower()


def score_gqa(questions: str | Path, answers: str | Path) -> dict[str, Any]:
    """questions: testdev_balanced_questions.json ({questionId: {answer, ...}})."""
    truth = read_json(questions)
    preds, right = [], 0
    for rec in read_jsonl(answers, ("question_id", "text")):
        qid = str(rec["question_id"])
        if qid not in truth:
            raise EvalInputError(f"{at(answers, rec)}: question_id {qid!r} not in {questions}")
        pred = gqa_prediction(rec["text"])
        preds.append({"questionId": qid, "prediction": pred})
        right += pred == truth[qid]["answer"]
    if not preds:
        raise EvalInputError(f"{answers}: no answers")
    return {"accuracy": 100.0 * right / len(preds), "samples": len(preds), "_files": {"submission": preds}}
