"""lphi-verify: re-check an export directory on this machine against the golden data it carries.

    lphi-verify DIR [--backend onnxruntime|tensorrt] [--device cpu|cuda[:N]] [--provider NAME]
                [--min-token-match R] [--json]

Runs the export's verification again — the same inputs, the same gates as `lphi-export` (the near-tie
rule included) — with the engines as they run here (another CPU, onnxruntime's CUDA provider, TensorRT
engines built on the robot), and prints the per-part table. Needs neither torch, transformers nor the
checkpoint: `pip install "lphi-edge[onnx]"` is enough. Exit status: 0 passed, 1 failed (the report says
why), 2 bad input (a missing or modified file, no golden data, an unknown option; one line).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from lphi_edge.cli._common import EXIT_FAILURE, check_engine_args, run, setup_logging
from lphi_edge.runtime.device import DEVICE_HELP


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lphi-verify", description=__doc__.split("\n")[0])
    p.add_argument("export", metavar="DIR", help="an lphi-export directory (or a shipped model: shapes-demo)")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt"], default=None, help="default: the manifest's")
    p.add_argument("--device", default=None, help=f"{DEVICE_HELP}; default cpu (cuda for tensorrt)")
    p.add_argument("--provider", default=None, help="onnxruntime execution provider: cpu | cuda | tensorrt")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    p.add_argument("--min-token-match", type=float, default=None, help="also fail below this greedy token-match rate")
    p.add_argument("--json", action="store_true", help="print one JSON object (last line of stdout)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def _main() -> int:
        from lphi_edge.assistant import Assistant
        from lphi_edge.errors import ConfigError
        from lphi_edge.export.verify import check, report_table
        from lphi_edge.format.golden import Golden
        from lphi_edge.format.manifest import Manifest, is_export_dir
        from lphi_edge.format.shipped import resolve_model_dir

        check_engine_args(args)
        if args.min_token_match is not None and not 0 <= args.min_token_match <= 1:
            raise ConfigError(f"--min-token-match must be in [0, 1], got {args.min_token_match}")
        path = resolve_model_dir(args.export, "onnxruntime")
        if not is_export_dir(path):
            raise ConfigError(f"{path} is not an export directory (no manifest.json): lphi-verify checks exports")
        t0 = time.perf_counter()
        manifest = Manifest.load(path, rehash=True)  # every file hashed again: the golden data too
        if manifest.golden is None:
            raise ConfigError(f"{path} carries no golden verification data (exported by an older lphi-edge): re-export")
        golden = Golden.load(path)
        if args.provider is not None and (args.backend or manifest.backend) != "onnxruntime":
            raise ConfigError("--provider chooses onnxruntime's execution provider: it needs --backend onnxruntime")
        exported = Assistant.from_pretrained(  # the files were just checked against their hashes
            path, backend=args.backend, device=args.device, provider=args.provider, threads=args.threads,
            verify_checksums=False,
        )  # fmt: skip
        min_match = args.min_token_match
        if min_match is None:
            min_match = manifest.export_config.get("min_token_match")  # the export's own extra gate, if it had one
        kv_quant = manifest.kv_quant.dtype if manifest.kv_quant else None
        report = check(exported, golden, manifest.precision, min_token_match=min_match, kv_quant=kv_quant).to_dict()
        be = exported.backend
        where = f"{be.name} {be.precision} on {be.device}" + (f" ({be.provider})" if hasattr(be, "provider") else "")
        if args.json:
            out = {"export": str(path), "engine": where, "seconds": round(time.perf_counter() - t0, 2)}
            print(json.dumps(out | {"report": report}))
        else:
            print(f"lphi-verify {path}: {where}")
            print(report_table(report))
        return 0 if report["passed"] else EXIT_FAILURE

    return run("lphi-verify", _main)


if __name__ == "__main__":
    sys.exit(main())
