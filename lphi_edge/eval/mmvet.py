"""MM-Vet: the GPT-4 grader's input file ({"v1_<question_id>": answer}); no grader runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lphi_edge.eval.io import read_jsonl


def mmvet_submission(answers: str | Path) -> dict[str, Any]:
    sub = {f"v1_{rec['question_id']}": rec["text"] for rec in read_jsonl(answers, ("question_id", "text"))}
    return {"samples": len(sub), "_files": {"submission": sub}}
