"""lphi-export: split a LLaVA-Phi checkpoint into verified ONNX engines (and TensorRT on the target).

    lphi-export MODEL --out DIR [--fp16] [--quant int8|int4] [--block-size 32] [--quant-vision]
                [--kv-cache concat|shared] [--kv-quant int8 [--kv-calibration-images DIR]
                [--kv-calibration-frames 8] [--kv-calibration-headroom 1.25]]
                [--trt] [--opset 20] [--no-verify] [--overwrite]

For onnxruntime on a CPU, `--quant int4 --block-size 256 --kv-cache shared` answers a frame soonest, and
`--kv-quant int8` on top decodes fastest per token (its prefill is slower; benchmarks/README.md);
`--kv-cache concat` (the default) is the one TensorRT can build.

The verification report (per-part max |diff| and cosine, greedy answers vs the PyTorch model) is
printed and stored in DIR/manifest.json; a failed verification exits non-zero and publishes nothing.
"""

from __future__ import annotations

import argparse
import sys

from lphi_edge.cli._common import run, setup_logging
from lphi_edge.format.manifest import KV_CACHES, KV_QUANTS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lphi-export", description=__doc__.split("\n")[0])
    p.add_argument("model", help="native LLaVA-Phi checkpoint directory (or a shipped model: shapes-demo)")
    p.add_argument("--out", required=True, help="export directory to create")
    p.add_argument("--fp16", action="store_true", help="fp16 weights and compute (vision, embeddings, decoder)")
    p.add_argument("--quant", choices=["int8", "int4"], help="weight-only MatMulNBits quantization of the decoder")
    p.add_argument(
        "--block-size", type=int, default=32, help="quantization block: 16..256 (default 32; 256 reads fewest scales)"
    )
    p.add_argument("--quant-vision", action="store_true", help="quantize the vision encoder too")
    p.add_argument(
        "--kv-cache",
        choices=KV_CACHES,
        default="concat",
        help="concat: the decoder returns past + new (any runtime, TensorRT included); shared: onnxruntime "
        "GroupQueryAttention writes new positions into one preallocated buffer — no whole-cache copy per token",
    )
    p.add_argument(
        "--kv-quant",
        choices=KV_QUANTS,
        help="keep the shared KV cache as int8 (per-channel scales calibrated on the PyTorch model): a quarter of "
        "the cache bytes each decode step reads — faster decode, slower prefill on a CPU; needs --kv-cache shared",
    )
    p.add_argument(
        "--kv-calibration-images",
        metavar="DIR",
        help="frames like the deployment's to calibrate the int8 KV cache on (default: synthetic scenes)",
    )
    p.add_argument("--kv-calibration-frames", type=int, metavar="N", help="frames to calibrate on (default 8)")
    p.add_argument(
        "--kv-calibration-headroom",
        type=float,
        metavar="X",
        help="scales cover this multiple of the largest calibrated value (default 1.25)",
    )
    p.add_argument("--trt", action="store_true", help="also build TensorRT engines on this machine's GPU")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (default 20)")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check against the PyTorch model")
    p.add_argument("--verify-pairs", type=int, default=8, help="frame/prompt pairs in the end-to-end check")
    p.add_argument(
        "--min-token-match",
        type=float,
        default=None,
        help="fail the export below this greedy token-match rate (e.g. 0.9 to gate int4)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    calibration = {
        k: v
        for k, v in (
            ("images", args.kv_calibration_images),
            ("frames", args.kv_calibration_frames),
            ("headroom", args.kv_calibration_headroom),
        )
        if v is not None
    }
    if calibration and not args.kv_quant:
        p.error("--kv-calibration-images/-frames/-headroom calibrate the int8 KV cache: they need --kv-quant int8")
    setup_logging(args.verbose)

    def _main() -> int:
        from lphi_edge.export.config import ExportConfig
        from lphi_edge.export.exporter import VerificationError, export_model
        from lphi_edge.export.kv_quant import KVCalibrationConfig
        from lphi_edge.export.verify import report_table
        from lphi_edge.format.manifest import Manifest
        from lphi_edge.format.shipped import resolve_model_dir

        config = ExportConfig(
            fp16=args.fp16,
            quant=args.quant,
            block_size=args.block_size,
            quant_vision=args.quant_vision,
            opset=args.opset,
            verify=not args.no_verify,
            verify_pairs=args.verify_pairs,
            min_token_match=args.min_token_match,
            kv_cache=args.kv_cache,
            kv_quant=args.kv_quant,
            kv_calibration=KVCalibrationConfig(**calibration),
            trt=args.trt,
            overwrite=args.overwrite,
        )
        if args.trt:  # fail before the (long) ONNX export when TensorRT cannot run here
            from lphi_edge.runtime.cuda_trt import require_tensorrt

            require_tensorrt()
        try:
            out = export_model(resolve_model_dir(args.model), args.out, config)
        except VerificationError as e:
            print(report_table(e.report), file=sys.stderr)
            raise
        report = Manifest.load(out, verify_checksums=False).verification
        if report is not None:
            print(report_table(report))
        print(f"wrote {config.precision} export to {out}")
        return 0

    return run("lphi-export", _main)


if __name__ == "__main__":
    raise SystemExit(main())
