"""lphi-build-engines: TensorRT engines for an export directory, built on this machine's GPU and verified.

    lphi-build-engines DIR [--precision fp16|fp32] [--workspace-gb N] [--overwrite]

For the robot: copy an export directory to the target (Jetson or any CUDA machine), then build its
engines there — the directory gets DIR/trt/<gpu>-sm<XY>-trt<version>-<precision>/ — with nothing but
TensorRT, cuda-python and the lean runtime (`pip install "lphi-edge[onnx]"`; no torch, no checkpoint).
The new engines are checked against the golden data the export carries, with the export's own gates
(`lphi-verify --backend tensorrt`), and published only if they pass. An identical build already there
is reused (unless --overwrite). Exit status: 0 built and verified, 1 the engines failed verification
(nothing published; the report says why), 2 bad input — no TensorRT or no GPU here (one line saying
what is missing and how to get it), a missing or modified export, a bad option.
"""

from __future__ import annotations

import argparse
import sys

from lphi_edge.cli._common import EXIT_FAILURE, run, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lphi-build-engines", description=__doc__.split("\n")[0])
    p.add_argument("export", metavar="DIR", help="an lphi-export directory (copied to this machine)")
    p.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="engine precision (default fp16)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace in GiB (default 4)")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if identical engines exist")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (and TensorRT's) to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def _main() -> int:
        from lphi_edge.export.tensorrt import TrtBuildConfig, build_verified_engines
        from lphi_edge.export.verify import VerificationError, report_table
        from lphi_edge.format.manifest import Manifest
        from lphi_edge.runtime.cuda_trt import require_tensorrt

        config = TrtBuildConfig(precision=args.precision, workspace_gb=args.workspace_gb)  # validated first
        Manifest.load(args.export)  # a missing or modified export is the first thing to hear about
        require_tensorrt()  # then: TensorRT and a GPU, or what is missing and how to get it
        try:
            out, report = build_verified_engines(args.export, config, overwrite=args.overwrite)
        except VerificationError as e:
            print(report_table(e.report))
            print(f"lphi-build-engines: {e}", file=sys.stderr)
            return EXIT_FAILURE
        print(report_table(report))
        print(f"TensorRT {config.precision} engines verified and published: {out}")
        return 0

    return run("lphi-build-engines", _main)


if __name__ == "__main__":
    sys.exit(main())
