"""lphi-ask: answer one instruction about one image.

    lphi-ask --model DIR --image PATH --prompt TEXT [--backend B] [--device D] [--dtype T] [--threads N]
             [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--stop STR ...] [--json]
             [--visual-tokens K]

Without --json the answer streams to stdout and a timing line goes to stderr. With --json, stdout's
last line is one JSON object: text, token_ids, finish_reason, backend, precision, device, timings_ms.
A bad --device or --threads is one `lphi-ask: error: ...` line and exit status 2, before anything loads.
"""

from __future__ import annotations

import argparse
import json
import sys

from lphi_edge.cli._common import check_engine_args, run, setup_logging
from lphi_edge.runtime.backend import TORCH_DTYPES
from lphi_edge.runtime.device import DEVICE_HELP


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lphi-ask", description="Answer an instruction about an image with LLaVA-Phi.")
    p.add_argument("--model", required=True, help="checkpoint directory or export directory (lphi-export)")
    p.add_argument("--image", required=True, help="image file (PNG, JPEG, ...)")
    p.add_argument("--prompt", required=True, help="question or instruction")
    p.add_argument(
        "--backend",
        default=None,
        choices=["torch", "onnxruntime", "tensorrt"],
        help="default: torch for a checkpoint, the manifest's backend for an export",
    )
    p.add_argument("--device", default=None, help=f"{DEVICE_HELP}; default cpu (cuda for tensorrt)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=TORCH_DTYPES,
        help="torch backend precision (fp32); int8: int8 matmuls on the CPU, bf16 elsewhere",
    )
    p.add_argument(
        "--provider",
        default=None,
        choices=["cpu", "cuda", "tensorrt"],
        help="onnxruntime execution provider (default: the device's); refused, never a silent CPU fallback",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads, 1..CPU count: torch's (process-wide) and onnxruntime's intra-op (default: theirs)",
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument(
        "--visual-tokens",
        type=int,
        default=None,
        metavar="K",
        help="feed the LM K of the image's N tokens, those the vision tower attends to most (VisionZip; 1..N)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (last line of stdout)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def _main() -> int:
        from lphi_edge.assistant import Assistant, generation_config
        from lphi_edge.processing.image import load_image
        from lphi_edge.processing.template import check_question
        from lphi_edge.runtime.visual_tokens import VisualTokens

        # Cheap checks first: a bad device, thread count, image or prompt must not wait for the weights to load.
        check_engine_args(args)
        VisualTokens.of(args.visual_tokens)  # K ≥ 1 now; K ≤ N once the model is known
        gen = generation_config(
            dict(
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
                top_k=args.top_k,
                seed=args.seed,
                stop=tuple(args.stop),
            )
        )
        check_question(args.prompt)
        image = load_image(args.image)
        assistant = Assistant.from_pretrained(
            args.model,
            backend=args.backend,
            device=args.device,
            dtype=args.dtype,
            threads=args.threads,
            provider=args.provider,
            visual_tokens=args.visual_tokens,
        )
        if args.json:
            answer = assistant.ask(image, args.prompt, config=gen)
            print(json.dumps(answer.to_dict(), ensure_ascii=False))
            return 0
        answer = assistant.ask(
            image, args.prompt, config=gen, on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush())
        )
        sys.stdout.write("\n")
        t = answer.timings
        print(
            f"[{answer.backend} {answer.precision} {answer.device}] preprocess {t.preprocess_ms:.0f} ms · "
            f"vision {t.vision_ms:.0f} ms · prefill {t.prefill_ms:.0f} ms · ttft {t.ttft_ms:.0f} ms · "
            f"{t.new_tokens} tokens at {t.decode_tokens_per_s:.1f} tok/s ({answer.finish_reason})",
            file=sys.stderr,
        )
        return 0

    return run("lphi-ask", _main)


if __name__ == "__main__":
    raise SystemExit(main())
