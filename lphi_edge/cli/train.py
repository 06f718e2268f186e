"""lphi-train: one stage of the LLaVA-Phi recipe (pretrain | finetune | sft).

    lphi-train STAGE --config train/configs/STAGE.yaml [--model CKPT] [--data JSON] [--out DIR]
               [--set key=value ...]

Rerunning the same command resumes from the newest checkpoint in OUT/checkpoints.
"""

from __future__ import annotations

import argparse
import os

from lphi_edge.cli._common import run, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lphi-train", description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=["pretrain", "finetune", "sft"])
    p.add_argument("--config", help="YAML of TrainConfig fields")
    p.add_argument("--model", help="starting checkpoint")
    p.add_argument("--data", help="LLaVA JSON")
    p.add_argument("--image-folder")
    p.add_argument("--out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def _main() -> int:
        from lphi_edge.format.shipped import SHIPPED_MODELS
        from lphi_edge.train.config import TrainConfig
        from lphi_edge.train.trainer import train

        config = TrainConfig.load(
            args.config,
            args.set,
            stage=args.stage,
            model=str(SHIPPED_MODELS.get(args.model, args.model)) if args.model else None,  # e.g. shapes-demo
            data=args.data,
            image_folder=args.image_folder,
            out=args.out,
        )
        final = train(config)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 wrote it
            print(f"wrote {final}")
        return 0

    return run("lphi-train", _main)


def make_shapes(argv: list[str] | None = None) -> int:
    """lphi-make-shapes --out DIR --n N --seed S: the shapes task as LLaVA JSON + images."""
    p = argparse.ArgumentParser(prog="lphi-make-shapes", description=make_shapes.__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, required=True, help="frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--multi-turn", type=float, default=0.5, help="share of frames given one multi-turn conversation")
    p.add_argument(
        "--binding",
        action="store_true",
        help="also write finetune_binding.json: the conversations + questions only the colour-shape binding answers",
    )
    p.add_argument(
        "--colour-drill",
        action="store_true",
        help="also write finetune_colour.json (needs --binding): every multi-shape frame's colour questions in one "
        "conversation + a replay of finetune_binding.json, for a colour curriculum stage after stage 2",
    )
    p.add_argument(
        "--camera-effects",
        type=float,
        nargs="?",
        const=1.0,
        default=0.0,
        metavar="SHARE",
        help="pass frames through camera effects (resize through 1280x720, JPEG 60-90, noise, brightness): "
        "all of them, or this share (0..1)",
    )
    args = p.parse_args(argv)
    setup_logging(False)

    def _main() -> int:
        from pathlib import Path

        from lphi_edge.data.make_shapes import write_shapes_dataset
        from lphi_edge.errors import ConfigError

        if args.n < 1:
            raise ConfigError(f"--n must be ≥ 1, got {args.n}")
        if not 0.0 <= args.multi_turn <= 1.0:
            raise ConfigError(f"--multi-turn must be a probability in [0, 1], got {args.multi_turn}")
        if not 0.0 <= args.camera_effects <= 1.0:
            raise ConfigError(f"--camera-effects must be a share in [0, 1], got {args.camera_effects}")
        if args.colour_drill and not args.binding:
            raise ConfigError("--colour-drill replays finetune_binding.json records: add --binding")
        out = write_shapes_dataset(
            Path(args.out),
            args.n,
            args.seed,
            args.size,
            args.multi_turn,
            args.binding,
            args.camera_effects,
            args.colour_drill,
        )
        print(f"wrote {out}")
        return 0

    return run("lphi-make-shapes", _main)


if __name__ == "__main__":
    raise SystemExit(main())
