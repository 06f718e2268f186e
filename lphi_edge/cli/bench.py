"""lphi-bench: per-stage latency (preprocess, vision, prefill, decode, end to end) of one or more models
in one process, next to transformers' eager generate() and the machine's floor.

    lphi-bench --model ckpt/ --model export-int4/ --baseline hf --json out.json --markdown out.md --plot out.png
    lphi-bench --synthetic-config phi2-2l --synthetic-exports fp16,int8,int4 --baseline hf --json out.json
    lphi-bench --model ckpt/ --device cuda:1 --torch-dtypes fp16,bf16 --baseline hf --threads 4
    lphi-bench --synthetic-config phi2-2l --visual-tokens 144,64 --reused-frame --baseline hf --json out.json

--baseline hf measures transformers' generate() once per precision the engines need (fp16 engines against
fp16 transformers, ...); each speed-up names its baseline. Each result records the CPU threads its engine ran
with ("threads"). A bad --device or --threads is one `lphi-bench: error: ...` line and exit status 2.
--visual-tokens K,... adds a row per K for each engine, --reused-frame a row timing a new capture of the frame
just asked about (frame reuse on), both on the same loaded engine, interleaved with the others. --phased
PROMPT+TOKENS adds a row for two loaded engines used as one (Assistant.phased: frames and prefill on the first,
the tokens on the second, the KV cache handed over once per answer), e.g.

    lphi-bench --synthetic-config phi2-2l --synthetic-exports int4-b256-shared --torch-dtypes bf16 \
        --phased torch/bf16+onnxruntime/int4 --baseline hf --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lphi_edge.cli._common import run, setup_logging
from lphi_edge.runtime.device import DEVICE_HELP


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lphi-bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], help="checkpoint or export directory (repeatable)")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), help="default: from each model")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default cpu); the floors are measured there too")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), help="onnxruntime execution provider for exports")
    p.add_argument("--image", help="frame to ask about (default: the shipped sample frame)")
    p.add_argument("--prompt", help="question (default: a one-word question)")
    p.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per run (eos masked until then)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads, 1..CPU count: torch's and every onnxruntime session's intra-op (default: theirs)",
    )
    p.add_argument(
        "--baseline",
        choices=("hf",),
        help="also run transformers' eager generate() on the checkpoint, in each measured engine's precision",
    )
    p.add_argument("--synthetic-config", help="random-weight model at real widths, e.g. phi2-2l (2 decoder layers)")
    p.add_argument(
        "--synthetic-exports",
        default="",
        help="exports of it to build and measure, comma-separated: fp32, fp16, int8, int4, int4-b128, int4-b256, "
        "int8-vision, and with the KV cache written in place (--kv-cache shared): int8-shared, int4-b128-shared, "
        "int4-b256-shared, and that cache in int8 (--kv-quant int8): int4-b256-shared-kv8",
    )
    p.add_argument("--work", default=".cache/lphi-bench", help="where synthetic models and exports are kept")
    p.add_argument("--torch-dtypes", default="fp32", help="dtypes to run checkpoints in, e.g. fp32,bf16")
    p.add_argument(
        "--cuda-graphs",
        choices=("on", "off", "both"),
        default="on",
        help="torch backend on CUDA: decode from a captured CUDA graph, eagerly, or both side by side",
    )
    p.add_argument(
        "--torch-compile",
        choices=("on", "off", "both"),
        default="off",
        help="torch backend: vision encoder and prefill as compiled graphs (compiled while loading), eager, or both",
    )
    p.add_argument(
        "--visual-tokens",
        default="",
        metavar="K[,K...]",
        help="also a row per K for each engine: the LM fed K of the N image tokens (VisionZip-style, 1..N)",
    )
    p.add_argument(
        "--reused-frame",
        action="store_true",
        help="also a row per engine: a new noisy capture of the frame just asked about, frame reuse on (TTFT "
        "from the cached features and image positions; the same question again: a stored answer)",
    )
    p.add_argument(
        "--phased",
        action="append",
        default=[],
        metavar="PROMPT+TOKENS",
        help="also a row for an engine pair (repeatable): frames and prefill on one loaded engine, the tokens on "
        "another, e.g. torch/bf16+onnxruntime/int4 (an engine's label or its model directory's name)",
    )
    p.add_argument("--json", help="write the full result here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--plot", help="write the stacked stage bars here (PNG)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def _main() -> int:
        from lphi_edge.bench.report import markdown, plot
        from lphi_edge.bench.runner import DEFAULT_PROMPT, BenchConfig, run_bench

        cfg = BenchConfig(
            models=tuple(args.model),
            backend=args.backend,
            device=args.device,
            image=args.image,
            prompt=args.prompt or DEFAULT_PROMPT,
            new_tokens=args.new_tokens,
            runs=args.runs,
            warmup=args.warmup,
            threads=args.threads,
            provider=args.provider,
            baseline=args.baseline,
            synthetic_config=args.synthetic_config,
            synthetic_exports=tuple(x for x in args.synthetic_exports.split(",") if x),
            work=args.work,
            torch_dtypes=tuple(x for x in args.torch_dtypes.split(",") if x),
            cuda_graphs=args.cuda_graphs,
            torch_compile=args.torch_compile,
            visual_tokens=_ints(args.visual_tokens, "--visual-tokens"),
            reused_frame=args.reused_frame,
            phased=tuple(_pair(x) for x in args.phased),
        )
        result = run_bench(cfg)
        result["command"] = " ".join(["lphi-bench", *(argv if argv is not None else sys.argv[1:])])
        table = markdown(result)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        if args.markdown:
            Path(args.markdown).write_text(table)
        if args.plot:
            plot(result, args.plot)
        print(table, end="")
        return 0

    return run("lphi-bench", _main)


def _pair(text: str) -> tuple[str, str]:
    from lphi_edge.errors import ConfigError

    parts = [x.strip() for x in text.split("+")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--phased takes PROMPT+TOKENS (two engines joined by one '+'), got {text!r}")
    return parts[0], parts[1]


def _ints(text: str, flag: str) -> tuple[int, ...]:
    from lphi_edge.errors import ConfigError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes whole numbers separated by commas, got {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())
