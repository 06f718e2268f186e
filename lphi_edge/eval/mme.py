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
from lphi_edge.eval.io import at, read_jsonl

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


def mme_ground_truth(mme_dir: str | Path) -> dict[tuple[str, str, str], str]:
    """(category, <image stem>.txt, question) → Yes/No from MME_Benchmark_release_version (both layouts:
    <category>/questions_answers_YN/*.txt, or the .txt files beside the images)."""
    gt = {}
    root = Path(mme_dir)
    if not root.is_dir():
        raise EvalInputError(f"{root}: expected the MME_Benchmark_release_version directory")
    for cat in sorted(d for d in root.iterdir() if d.is_dir()):
        qa = cat / "questions_answers_YN" if (cat / "images").is_dir() else cat
        for f in sorted(qa.glob("*.txt")):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                parts = line.strip().split("\t")
                if len(parts) != 2:
                    raise EvalInputError(f"{f}: line {n}: expected 'question<TAB>Yes|No'")
                gt[(cat.name, f.name, parts[0])] = parts[1]
    return gt


def write_mme_results(answers: str | Path, mme_dir: str | Path, out_dir: str | Path) -> Path:
    """LLaVA's convert_answer_to_mme.py: answers JSONL (question_id = <category>/<image>) → the results
    directory calculation.py reads, with the ground truth looked up in the MME release."""
    gt = mme_ground_truth(mme_dir)
    short = "Answer the question using a single word or phrase."
    per_category: dict[str, list[str]] = {}
    for rec in read_jsonl(answers, ("question_id", "prompt", "text")):
        category = str(rec["question_id"]).split("/")[0]
        file = str(rec["question_id"]).split("/")[-1].split(".")[0] + ".txt"
        prompt = rec["prompt"].replace(short, "").strip() if short in rec["prompt"] else rec["prompt"]
        if "Please answer yes or no." not in prompt:
            prompt += " Please answer yes or no."
            if (category, file, prompt) not in gt:
                prompt = prompt.replace(" Please answer yes or no.", "  Please answer yes or no.")
        if (category, file, prompt) not in gt:
            raise EvalInputError(f"{at(answers, rec)}: no ground truth for {category}/{file} question {prompt!r}")
        line = "\t".join((file, prompt, gt[(category, file, prompt)], rec["text"]))
        per_category.setdefault(category, []).append(line + "\n")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for category, lines in per_category.items():
        (out / f"{category}.txt").write_text("".join(lines))
    return out
