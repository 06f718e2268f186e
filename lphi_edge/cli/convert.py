"""lphi-convert: a llava-hf LLaVA-Phi (LlavaForConditionalGeneration + Phi) → the native layout.

lphi-convert SRC DST [--shard-size 5GB] [--overwrite]
"""

from __future__ import annotations

import argparse
import logging

from lphi_edge.cli._common import run, setup_logging

logger = logging.getLogger("lphi-convert")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lphi-convert", description="Convert a llava-hf Phi model to native LLaVA-Phi.")
    p.add_argument("src", help="llava-hf model directory (config.json model_type 'llava' with a Phi text config)")
    p.add_argument("dst", help="output directory (written atomically)")
    p.add_argument("--shard-size", default="5GB", help="max bytes per safetensors shard")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def _main() -> int:
        from lphi_edge.model.convert import convert_llava_hf

        out = convert_llava_hf(args.src, args.dst, max_shard_size=args.shard_size, overwrite=args.overwrite)
        print(f"wrote native LLaVA-Phi checkpoint to {out}")
        return 0

    return run("lphi-convert", _main)


if __name__ == "__main__":
    raise SystemExit(main())
