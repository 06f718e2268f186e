"""How far the torch backend's reduced-precision compute moves a model's outputs from fp32 (issue #18).

    .venv/bin/python benchmarks/engine_accuracy.py --model shapes-demo --model .cache/bench18/phi2-2l \
        --dtypes bf16,int8 --json benchmarks/results/torch_int8_accuracy.json

The export gate's own check (`lphi_edge.export.verify.verify`), run on torch engines instead of exports: the fp32
torch model makes the golden record (8 synthetic frames and prompts, 16-token greedy answers, teacher-forced
steps), and each dtype's engine is judged against it — cosine and max |diff| per part (vision features, prefill
logits, a KV sample, decode logits, answer logits) and greedy token match. bf16 and int8 have no cosine gate
(as int8 / int4 exports: reported); the report says which parts an fp16 export's gate (cosine ≥ 0.999) would pass.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lphi_edge import Assistant
from lphi_edge.export.verify import verify

FP16_GATE = 0.999


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, help="checkpoint directory or shipped name")
    p.add_argument("--dtypes", default="bf16,int8")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = []
    for model in args.model:
        reference = Assistant.from_pretrained(model, dtype="fp32", threads=args.threads)
        for dtype in args.dtypes.split(","):
            engine = Assistant.from_pretrained(model, dtype=dtype, threads=args.threads)
            report = verify(reference, engine, dtype).to_dict()
            cosines = {name: part["cosine"] for name, part in report["parts"].items()}
            rows.append(
                {
                    "model": model,
                    "dtype": dtype,
                    "token_match_rate": report["token_match_rate"],
                    "identical_answers": f"{report['identical_answers']} / {report['pairs']}",
                    "cosine": cosines,
                    "parts_within_the_fp16_gate": sorted(n for n, c in cosines.items() if c >= FP16_GATE),
                    "report": report,
                }
            )
            logging.info("%s %s: token match %.3f, cosines %s", model, dtype, report["token_match_rate"], cosines)
            del engine
    Path(args.json).write_text(
        json.dumps({"command": " ".join(["benchmarks/engine_accuracy.py", *sys.argv[1:]]), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
