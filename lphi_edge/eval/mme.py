"""MME, as the official `eval_tool/calculation.py`: per subtask acc × 100 + acc+ × 100, and the perception
(10 subtasks) and cognition (4 subtasks) totals, in points.

Input: a results directory of 14 `<subtask>.txt` files, lines `image<TAB>question<TAB>Yes|No<TAB>prediction`,
the two questions of an image on consecutive lines. Quirks kept: lines are not stripped (the prediction
keeps its newline), exact `yes` / `no`, else `yes` then `no` searched in the first 4 characters, anything
else is wrong; pairs are consecutive lines whatever their image names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lphi_edge.errors import EvalInputError

SUBTASKS = {
    "perception": [
        "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
    ],
    "cognition": ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"],
}  # fmt: skip


def mme_label(prediction: str) -> str:
    """yes | no | other, the official parse of prediction.lower() (newline included)."""
    p = prediction.lower()
    if p in ("yes", "no"):
        return p
    head = p[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def score_mme(results_dir: str | Path) -> dict[str, Any]:
    results_dir = Path(results_dir)
    out: dict[str, Any] = {"subtasks": {}}
    for group, names in SUBTASKS.items():
        total = 0.0
        for name in names:
            path = results_dir / f"{name}.txt"
            try:
                lines = path.read_text().splitlines(keepends=True)
            except OSError as e:
                raise EvalInputError(f"cannot read {path}: {e.strerror or e} (MME needs all 14 files)") from None
            if not lines or len(lines) % 2:
                raise EvalInputError(f"{path}: {len(lines)} lines; expected an even, non-zero number (2 per image)")
            correct, pairs_right = 0, 0
            for i in range(0, len(lines), 2):
                both = 0
                for n, line in enumerate(lines[i : i + 2], i + 1):
                    fields = line.split("\t")
                    if len(fields) != 4:
                        raise EvalInputError(f"{path}: line {n}: {len(fields)} tab-separated fields, expected 4")
                    gt = fields[2].lower()
                    if gt not in ("yes", "no"):
                        raise EvalInputError(f"{path}: line {n}: ground truth {fields[2]!r}, expected Yes or No")
                    ok = mme_label(fields[3]) == gt
                    correct += ok
                    both += ok
                pairs_right += both == 2
            acc, acc_plus = correct / len(lines), pairs_right / (len(lines) // 2)
            score = 0 + acc * 100 + acc_plus * 100
            out["subtasks"][name] = score
            total += score
        out[group] = total
    return out
