"""One entry per benchmark: its official scorer, its headline figure and the LLaVA-Phi paper's value
(Table 1), plus `compare` (score deltas and answer agreement between runs) and the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lphi_edge.errors import ConfigError, EvalInputError
from lphi_edge.eval import gqa, mmbench, mme, mmvet, pope, sqa, vqa
from lphi_edge.eval.io import read_jsonl
from lphi_edge.eval.runner import BENCHMARKS, GENERATED


@dataclass(frozen=True)
class Inputs:
    """What the scorers read (the official scripts' arguments); each benchmark needs some of them."""

    answers: str | None = None
    questions: str | None = None
    annotations: str | None = None
    problems_dir: str | None = None
    split: str = "test"
    results_dir: str | None = None
    circular: bool = False

    def need(self, benchmark: str, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            flags = " ".join(f"--{n.replace('_', '-')}" for n in missing)
            raise ConfigError(f"--benchmark {benchmark} needs {flags}")


def _shapes(i: Inputs) -> dict[str, Any]:
    from lphi_edge.eval.shapes import shapes_accuracy

    results = []
    for rec in read_jsonl(i.answers, ("question_id", "text")):
        meta = rec.get("metadata") or {}
        if "type" not in meta or "expected" not in meta:
            raise EvalInputError(f"{i.answers}: line {rec['_line']}: not a shapes answer (metadata.type/expected)")
        results.append((meta["type"], meta["expected"], rec["text"]))
    if not results:
        raise EvalInputError(f"{i.answers}: no answers")
    return shapes_accuracy(results) | {"samples": len(results)}


def _mme_results(i: Inputs) -> str:
    """The results directory: given (--results-dir), or converted from --answers + --annotations (the MME
    release) into --results-dir or a temporary one."""
    if i.answers and i.annotations:
        import tempfile

        return str(mme.write_mme_results(i.answers, i.annotations, i.results_dir or tempfile.mkdtemp(prefix="mme-")))
    if i.results_dir:
        return i.results_dir
    raise ConfigError(
        "--benchmark mme needs --results-dir, or --answers with --annotations MME_Benchmark_release_version"
    )


NO_LOCAL_SCORE = "no --annotations (a server-scored split such as test-dev): the submission file only"


def _server_split(i: Inputs, local: Callable[[], dict[str, Any]], submission: list) -> dict[str, Any]:
    """VQAv2 / VizWiz: scored locally where annotations are at hand (val); the server's file either way."""
    metrics = local() if i.annotations else {"accuracy": None, "samples": len(submission), "note": NO_LOCAL_SCORE}
    return metrics | {"_files": {"submission": submission}}


# benchmark → (inputs it needs, scorer)
SCORERS: dict[str, tuple[tuple[str, ...], Callable[[Inputs], dict[str, Any]]]] = {
    "pope": (("questions", "answers", "annotations"), lambda i: pope.score_pope(i.questions, i.answers, i.annotations)),
    "sqa": (("problems_dir", "answers"), lambda i: sqa.score_sqa(i.problems_dir, i.answers, i.split)),
    "textvqa": (("annotations", "answers"), lambda i: vqa.score_textvqa(i.annotations, i.answers)),
    "vqav2": (
        ("answers",),
        lambda i: _server_split(
            i, lambda: vqa.score_vqav2(i.annotations, i.answers), vqa.vqav2_submission(i.answers, i.questions)
        ),
    ),
    "vizwiz": (
        ("questions", "answers"),
        lambda i: _server_split(
            i,
            lambda: vqa.score_vizwiz(i.annotations, i.questions, i.answers),
            vqa.vizwiz_submission(i.answers, i.questions),
        ),
    ),
    "gqa": (("questions", "answers"), lambda i: gqa.score_gqa(i.questions, i.answers)),
    "mme": ((), lambda i: mme.score_mme(_mme_results(i))),
    "mmbench": (("questions", "answers"), lambda i: mmbench.score_mmbench(i.questions, i.answers, i.circular)),
    "mmvet": (("answers",), lambda i: mmvet.mmvet_submission(i.answers)),
    "shapes": (("answers",), _shapes),
    "shapes-stream": (("answers",), _shapes),
}
assert set(SCORERS) == set(BENCHMARKS)

# benchmark → (headline label, how to read it from the metrics, LLaVA-Phi paper Table 1)
PAPER: dict[str, tuple[str, Callable[[dict], float | None], float | None]] = {
    "vqav2": ("VQAv2 accuracy %", lambda m: m.get("accuracy"), 71.4),
    "gqa": ("GQA accuracy %", lambda m: m.get("accuracy"), None),
    "vizwiz": ("VizWiz accuracy %", lambda m: m.get("accuracy"), 35.9),
    "sqa": ("ScienceQA-IMG accuracy %", lambda m: m.get("img_accuracy"), 68.4),
    "textvqa": ("TextVQA accuracy %", lambda m: m.get("accuracy"), 48.6),
    "pope": ("POPE F1 × 100 (mean of categories)", lambda m: _pope_f1(m), 85.0),
    "mme": ("MME perception", lambda m: m.get("perception"), 1335.1),
    "mmbench": ("MMBench accuracy %", lambda m: m.get("accuracy"), 59.8),
    "mmvet": ("MM-Vet (GPT-4 grader, not run here)", lambda m: None, 28.9),
    "shapes": ("shapes accuracy %", lambda m: 100 * m["accuracy"] if "accuracy" in m else None, None),
    "shapes-stream": ("shapes accuracy % (static camera stream)", lambda m: 100 * m["accuracy"], None),
}


def _pope_f1(m: dict) -> float | None:
    f1 = [c["f1"] for c in m.values() if isinstance(c, dict) and "f1" in c]
    return 100 * sum(f1) / len(f1) if f1 and None not in f1 else None


def score(benchmark: str, inputs: Inputs) -> dict[str, Any]:
    """{"benchmark", "metrics", "headline"} (+ "files": what the official script writes, not printed)."""
    if benchmark not in SCORERS:
        raise ConfigError(f"unknown benchmark {benchmark!r}: expected one of {BENCHMARKS}")
    needs, fn = SCORERS[benchmark]
    inputs.need(benchmark, *needs)
    metrics = fn(inputs)
    files = metrics.pop("_files", {})
    label, read, paper = PAPER[benchmark]
    return {
        "benchmark": benchmark,
        "metrics": metrics,
        "headline": {"label": label, "value": read(metrics), "paper": paper},
        "files": files,
    }


def compare(answer_files: list[str], benchmark: str | None = None, inputs: Inputs | None = None) -> dict[str, Any]:
    """Headline deltas against the first run, and how often each run's answer text equals the first's."""
    runs = [{r["question_id"]: r for r in read_jsonl(f, ("question_id", "text"))} for f in answer_files]
    first_meta = next(iter(runs[0].values()), {}).get("metadata") or {}
    benchmark = benchmark or first_meta.get("benchmark")
    rows = []
    for path, run in zip(answer_files, runs):
        meta = next(iter(run.values()), {}).get("metadata") or {}
        common = set(run) & set(runs[0])
        agree = sum(run[q]["text"].strip() == runs[0][q]["text"].strip() for q in common)
        row: dict[str, Any] = {
            "answers": path,
            "backend": meta.get("backend"),
            "precision": meta.get("precision"),
            "questions": len(run),
            "common_with_first": len(common),
            "agreement_with_first": agree / len(common) if common else None,
        }
        for flag in ("frame_reused", "answer_reused"):  # runs with frame reuse record what each answer reused
            seen = [(r.get("metadata") or {}).get(flag) for r in run.values()]
            if any(v is not None for v in seen):
                row[f"{flag}_fraction"] = sum(bool(v) for v in seen) / len(seen)
        if benchmark is not None and (benchmark in GENERATED or inputs is not None):
            base = inputs or Inputs()
            s = score(benchmark, Inputs(**{**base.__dict__, "answers": path}))
            row["headline"], row["metrics"] = s["headline"]["value"], s["metrics"]
        rows.append(row)
    if rows and "headline" in rows[0]:
        for row in rows:
            h0, h = rows[0]["headline"], row["headline"]
            row["delta_vs_first"] = None if h is None or h0 is None else h - h0
    return {"benchmark": benchmark, "runs": rows}


def report(scores: list[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """report.json + report.md: each benchmark's measured headline beside the paper's Table 1 value."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    measured = {s["benchmark"]: s["headline"]["value"] for s in scores}
    rows = [
        {"benchmark": b, "metric": label, "paper": paper, "measured": measured.get(b)}
        for b, (label, _, paper) in PAPER.items()
        if paper is not None or b in measured
    ]
    j = out_dir / "report.json"
    j.write_text(json.dumps({"rows": rows, "scores": scores}, indent=2) + "\n")
    fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
    lines = ["| benchmark | metric | LLaVA-Phi paper | measured |", "|---|---|---|---|"]
    lines += [f"| {r['benchmark']} | {r['metric']} | {fmt(r['paper'])} | {fmt(r['measured'])} |" for r in rows]
    md = out_dir / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return j, md
