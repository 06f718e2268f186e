"""Reading evaluation files with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lphi_edge.errors import EvalInputError


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise EvalInputError(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One JSON object per line (blank lines ignored); each must hold `required` keys."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise EvalInputError(f"cannot read {path}: {e.strerror or e}") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalInputError(f"{path}: line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise EvalInputError(f"{path}: line {i}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in required if k not in rec]
        if missing:
            raise EvalInputError(f"{path}: line {i}: missing {missing} (expected keys {list(required)})")
        rec["_line"] = i
        out.append(rec)
    return out


def answers_by_id(path: str | Path) -> dict[Any, dict[str, Any]]:
    """An answers file keyed by question_id (a later duplicate wins, as in the official scorers)."""
    return {rec["question_id"]: rec for rec in read_jsonl(path, ("question_id", "text"))}


def at(path: str | Path, rec: dict[str, Any]) -> str:
    """'FILE: line N' of a record read by read_jsonl."""
    return f"{path}: line {rec['_line']}"
