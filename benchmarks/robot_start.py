"""What a robot pays to trust an export (issue #16): `lphi-verify` wall time, and opening an export for the
node (Manifest.load + Assistant.from_pretrained, what the node's configure step runs) with and without the
checksum work — at Phi-2 width (full CLIP ViT-L/14-336 + 2 decoder layers, int4 b256 with the KV cache in
place) and, for the hashing, at full size by the file sizes of a 32-layer int4 export.

    .venv/bin/python benchmarks/robot_start.py --out benchmarks/results/robot_start_cpu.json

Every figure is a median of --runs runs in this process (lphi-verify: a fresh process each run). The
full-size hashing figure is computed from the sha256 rate measured in the same run over this export's own
files (labelled), not measured on a 1.8 GB export.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lphi_edge.bench.costs import Arch
from lphi_edge.bench.machine import machine_info
from lphi_edge.format.manifest import Manifest, sha256_file
from lphi_edge.model.synthetic import PHI2_LAYERS, synthetic_config, write_synthetic_checkpoint

logger = logging.getLogger("robot_start")
EXE = Path(sys.executable).parent


def _median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(f"{statistics.median(times):.4g}")


def _export(work: Path) -> Path:
    ckpt, export = work / "phi2-2l", work / "phi2-2l-int4-b256-shared"
    if not (ckpt / "config.json").is_file():
        write_synthetic_checkpoint(ckpt, "phi2-2l")
    if not (export / "manifest.json").is_file():
        cmd = [str(EXE / "lphi-export"), str(ckpt), "--out", str(export), "--overwrite", "--quant", "int4"]
        subprocess.run([*cmd, "--block-size", "256", "--kv-cache", "shared"], check=True)
    return export


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=".cache/bench")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    export = _export(Path(args.work))
    from lphi_edge.assistant import Assistant

    manifest = Manifest.load(export, verify_checksums=False)
    export_bytes = manifest.weight_bytes()
    results: dict = {"export": str(export), "export_mb": round(export_bytes / 2**20, 1), "runs": args.runs}

    # sha256 rate over the export's own files, and full-size hashing time from it
    t0 = time.perf_counter()
    for name in manifest.files:
        sha256_file(export / name)
    rate = export_bytes / (time.perf_counter() - t0)  # bytes/s
    arch = Arch.from_config(synthetic_config("phi2-2l"))
    decoder = manifest.weight_bytes("decoder_model_merged")  # scales with the decoder's parameters
    full_bytes = export_bytes - decoder + decoder * arch.decode_params(PHI2_LAYERS) / arch.decode_params()
    results["sha256_mb_per_s"] = round(rate / 2**20, 1)
    results["full_size_export_mb_estimated"] = round(full_bytes / 2**20)
    results["full_size_hash_s_computed"] = round(full_bytes / rate, 2)

    with tempfile.TemporaryDirectory() as cache:
        os.environ["LPHI_EDGE_CACHE"] = cache  # an empty record: the first open hashes everything
        results["manifest_load_ms"] = {
            "no_checksums": _median_ms(lambda: Manifest.load(export, verify_checksums=False), args.runs),
            "hash_everything": _median_ms(lambda: Manifest.load(export, rehash=True), args.runs),
            "hashes_recorded": _median_ms(lambda: Manifest.load(export), args.runs),  # the default
        }

        def open_hashing_everything() -> None:
            Manifest.load(export, rehash=True)
            Assistant.from_pretrained(export, verify_checksums=False)

        results["open_for_the_node_ms"] = {  # what the node's configure step runs
            "hash_everything": _median_ms(open_hashing_everything, args.runs),
            "hashes_recorded": _median_ms(lambda: Assistant.from_pretrained(export), args.runs),
        }
        verify = [str(EXE / "lphi-verify"), str(export), "--json"]
        runs = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            proc = subprocess.run(verify, capture_output=True, text=True, env=os.environ | {"LPHI_EDGE_CACHE": cache})
            runs.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise SystemExit(f"lphi-verify failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        results["lphi_verify_s"] = round(statistics.median(runs), 2)
        results["lphi_verify_report"] = json.loads(proc.stdout.strip().splitlines()[-1])["report"]["passed"]
    out = {"command": " ".join(sys.argv), "machine": machine_info(os.cpu_count() or 1), "results": results}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    logger.info("%s", json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
