"""lphi-eval: run a benchmark, score it with the official rules, compare runs, report against the paper.

lphi-eval run --model DIR --benchmark B --questions Q --images DIR --out ANSWERS.jsonl [--limit N] [--backend B]
lphi-eval run --model shapes-demo --benchmark shapes --out shapes.jsonl [--n 400 --seed 12345] [--visual-tokens K]
    [--camera-effects]
lphi-eval run --model shapes-demo --benchmark shapes-stream --frame-reuse on --out s.jsonl [--noise 3 --jpeg-quality 90]
lphi-eval score --benchmark pope --questions Q.jsonl --answers A.jsonl --annotations DIR [--json]
lphi-eval score --benchmark sqa --problems-dir DIR --answers A.jsonl [--split test]
lphi-eval score --benchmark textvqa --annotations TextVQA_0.5.1_val.json --answers A.jsonl
lphi-eval score --benchmark mme --results-dir DIR
lphi-eval compare TORCH.jsonl INT4.jsonl [--benchmark B + its scorer inputs] [--json]
lphi-eval report SCORE.json ... --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lphi_edge.cli._common import run, setup_logging
from lphi_edge.eval.runner import BENCHMARKS
from lphi_edge.runtime.backend import TORCH_DTYPES


def _scorer_flags(p: argparse.ArgumentParser, answers: bool = True) -> None:
    if answers:
        p.add_argument("--answers", help="answers JSONL (LLaVA's format)")
    p.add_argument("--questions", help="question file (POPE, VizWiz, GQA, MMBench; VQAv2 submission)")
    p.add_argument("--annotations", help="annotation file (TextVQA, VQAv2, VizWiz) or directory (POPE, MME release)")
    p.add_argument("--problems-dir", help="ScienceQA: directory with problems.json and pid_splits.json")
    p.add_argument("--split", default="test", help="ScienceQA split (default test)")
    p.add_argument("--results-dir", help="MME: directory of the 14 <subtask>.txt files (written there from --answers)")
    p.add_argument("--circular", action="store_true", help="MMBench: circular accuracy over rotated rounds")


def _frame_reuse(text: str) -> bool | float:
    if text in ("off", "on"):
        return text == "on"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected off, on or a tolerance in 8-bit levels, got {text!r}") from None


def _inputs(args):
    from lphi_edge.eval.scoring import Inputs

    return Inputs(
        answers=getattr(args, "answers", None),
        questions=args.questions,
        annotations=args.annotations,
        problems_dir=args.problems_dir,
        split=args.split,
        results_dir=args.results_dir,
        circular=args.circular,
    )


def _print_score(s: dict) -> None:
    h = s["headline"]
    value = "—" if h["value"] is None else f"{h['value']:.2f}"
    print(f"{s['benchmark']}: {h['label']} = {value}" + ("" if h["paper"] is None else f" (paper: {h['paper']})"))
    for key, v in s["metrics"].items():
        print(f"  {key}: {json.dumps(v) if isinstance(v, dict) else v}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lphi-eval", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="answer a benchmark's questions")
    r.add_argument("--model", required=True, help="checkpoint / export directory or shipped model name")
    r.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    r.add_argument("--questions", help="question file (LLaVA-1.5 eval format)")
    r.add_argument("--images", help="image folder")
    r.add_argument("--out", required=True, help="answers JSONL (resumed if it exists)")
    r.add_argument("--limit", type=int, help="first N questions only")
    r.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"))
    r.add_argument("--device", default=None, help="cpu | cuda | cuda:N; default cpu (cuda for tensorrt)")
    r.add_argument("--dtype", choices=TORCH_DTYPES, help="torch backend precision (fp32)")
    r.add_argument("--max-new-tokens", type=int)
    r.add_argument("--on-bad", choices=("error", "skip"), default="error", help="missing images: stop, or skip+count")
    r.add_argument("--n", type=int, default=400, help="shapes: frames; shapes-stream: scenes")
    r.add_argument("--seed", type=int, default=12345, help="shapes: seed")
    r.add_argument(
        "--visual-tokens", type=int, metavar="K", help="feed the LM K of the N image tokens (VisionZip-style, 1..N)"
    )
    r.add_argument(
        "--frame-reuse",
        type=_frame_reuse,
        default=False,
        metavar="off|on|LEVELS",
        help="reuse near-identical frames: off (exact only, default), on (default tolerance) or a tolerance",
    )
    r.add_argument("--noise", type=float, default=3.0, help="shapes-stream: sensor noise σ in 8-bit levels")
    r.add_argument(
        "--jpeg-quality", type=int, default=90, help="shapes-stream: JPEG quality of each capture (0: uncompressed)"
    )
    r.add_argument(
        "--camera-effects",
        action="store_true",
        help="shapes: the same frames as a camera delivers them (resized through 1280x720, JPEG, noise, brightness)",
    )

    s = sub.add_parser("score", help="score answers with the official rules")
    s.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    _scorer_flags(s)
    s.add_argument(
        "--submission", help="also write the server / grader file here (VQAv2, VizWiz, GQA, MMBench, MM-Vet)"
    )
    s.add_argument("--output-file", help="ScienceQA: the official analysis file")
    s.add_argument("--output-result", help="ScienceQA: the official result file")
    s.add_argument("--json", action="store_true", help="print one JSON object (last line of stdout)")

    c = sub.add_parser("compare", help="score deltas and answer agreement between runs")
    c.add_argument("answers", nargs="+", help="answers JSONL files; the first is the baseline")
    c.add_argument("--benchmark", choices=BENCHMARKS, help="default: from the answers' metadata")
    _scorer_flags(c, answers=False)
    c.add_argument("--json", action="store_true")

    rp = sub.add_parser("report", help="measured vs the paper's Table 1 (JSON + Markdown)")
    rp.add_argument("scores", nargs="+", help="JSON files written by `lphi-eval score --json`")
    rp.add_argument("--out", required=True, help="directory for report.json and report.md")

    args = p.parse_args(argv)
    setup_logging(args.verbose)
    return run("lphi-eval", lambda: _dispatch(args))


def _dispatch(args) -> int:
    if args.command == "run":
        from lphi_edge.eval.runner import RunConfig
        from lphi_edge.eval.runner import run as run_eval

        cfg = RunConfig(
            args.benchmark, args.model, args.out, args.questions, args.images, args.limit, args.backend,
            args.device, args.on_bad, args.max_new_tokens, args.n, args.seed, args.visual_tokens, args.frame_reuse,
            args.noise, args.jpeg_quality or None, args.camera_effects, args.dtype,
        )  # fmt: skip
        summary = run_eval(cfg)
        print(json.dumps(summary))
        return 0
    from lphi_edge.eval import scoring

    if args.command == "score":
        if args.benchmark in ("vqav2", "vizwiz") and not args.annotations and not args.submission:
            from lphi_edge.errors import ConfigError

            raise ConfigError(
                f"--benchmark {args.benchmark} needs --annotations to score locally, "
                "or --submission FILE to write the server's file (test-dev / test splits)"
            )
        s = scoring.score(args.benchmark, _inputs(args))
        _write_files(args, s.pop("files"))
        if args.json:
            print(json.dumps(s))
        else:
            _print_score(s)
        return 0
    if args.command == "compare":
        inputs = _inputs(args) if any([args.questions, args.annotations, args.problems_dir, args.results_dir]) else None
        result = scoring.compare(args.answers, args.benchmark, inputs)
        if args.json:
            print(json.dumps(result))
        else:
            for row in result["runs"]:
                head = (
                    "" if "headline" not in row else f" headline {row['headline']:.2f} (Δ {row['delta_vs_first']:+.2f})"
                )
                print(f"{row['answers']} [{row['backend']} {row['precision']}]: {row['questions']} answers, "
                      f"agreement with the first {100 * (row['agreement_with_first'] or 0):.1f}%{head}")  # fmt: skip
        return 0
    from lphi_edge.eval.io import read_json

    scores = [read_json(f) for f in args.scores]
    for path, sc in zip(args.scores, scores):
        if not isinstance(sc, dict) or "headline" not in sc:
            from lphi_edge.errors import EvalInputError

            raise EvalInputError(f"{path}: not the output of `lphi-eval score --json`")
    j, md = scoring.report(scores, args.out)
    print(Path(md).read_text(), end="")
    print(f"wrote {j} and {md}", file=sys.stderr)
    return 0


def _write_files(args, files: dict) -> None:
    targets = {"submission": args.submission, "output_file": args.output_file, "output_result": args.output_result}
    for key, path in targets.items():
        if path is None:
            continue
        if key not in files:
            from lphi_edge.errors import ConfigError

            raise ConfigError(f"--{key.replace('_', '-')} does not apply to --benchmark {args.benchmark}")
        if key == "submission" and args.benchmark == "mmbench":
            _write_sheet(Path(path), files[key])
        else:
            Path(path).write_text(json.dumps(files[key], indent=2) + "\n")


def _write_sheet(path: Path, rows: list[dict]) -> None:
    """MMBench's submission sheet: .xlsx (needs openpyxl) or .tsv."""
    import csv

    columns = list(rows[0]) if rows else ["index", "prediction"]
    if path.suffix == ".xlsx":
        try:
            from openpyxl import Workbook
        except ImportError:
            from lphi_edge.errors import ConfigError

            raise ConfigError("an .xlsx sheet needs openpyxl (pip install openpyxl), or name a .tsv file") from None
        wb = Workbook()
        ws = wb.active
        ws.append(columns)
        for row in rows:
            ws.append([row.get(c) for c in columns])
        wb.save(path)
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns, delimiter="\t")
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
