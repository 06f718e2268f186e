"""How fast onnxruntime's int4 / int8 weight-only kernels (MatMulNBits) read weights on this machine, next to
the copy bandwidth lphi-bench's decode floor divides by. A decode step is a chain of such one-row products
(M = 1), so this is the rate an exported decoder can reach at best with these kernels.

    python benchmarks/int4_gemv.py --json benchmarks/results/int4_gemv.json [--threads 2]

Shapes: Phi-2's fc1 (2560 → 10240) and its LM head (2560 → 51200); blocks of 32, 128 and 256, accuracy
level 4 (int8 dot products), as `lphi-export --quant int4 [--block-size 128|256]` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lphi_edge.bench.machine import cpu_model, memory_bandwidth_gbs, memory_read_gbs  # noqa: E402


def matmul_model(k: int, n: int, seed: int = 0) -> onnx.ModelProto:
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32) * 0.02
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def measure(k: int, n: int, bits: int, block: int, threads: int, runs: int = 200) -> dict:
    q = MatMulNBitsQuantizer(matmul_model(k, n), bits=bits, block_size=block, is_symmetric=True, accuracy_level=4)
    q.process()
    model = q.model.model
    weight_bytes = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)  # packed weights + scales
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gemv.onnx")
        onnx.save_model(model, path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = {"x": np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)}
    for _ in range(20):
        sess.run(None, x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, x)
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    return {
        "k": k,
        "n": n,
        "bits": bits,
        "block_size": block,
        "weight_bytes": weight_bytes,
        "p50_ms": round(ms, 4),
        "weights_read_gbs": round(weight_bytes / (ms / 1e3) / 1e9, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    before = memory_bandwidth_gbs(), memory_read_gbs()
    rows = [
        measure(k, n, bits, block, args.threads)
        for k, n in ((2560, 10240), (2560, 51200))
        for bits, block in ((4, 32), (4, 128), (4, 256), (8, 32), (8, 128), (8, 256))
    ]
    after = memory_bandwidth_gbs(), memory_read_gbs()  # a VM's rates move: the best of before and after
    bandwidth, read = max(before[0], after[0]), max(before[1], after[1])
    for r in rows:
        r["fraction_of_copy_bandwidth"] = round(r["weights_read_gbs"] / bandwidth, 3)
        r["fraction_of_read_bandwidth"] = round(r["weights_read_gbs"] / read, 3)
    out = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads},
        "onnxruntime": ort.__version__,
        "copy_bandwidth_gbs": round(bandwidth, 2),
        "read_bandwidth_gbs": round(read, 2),
        "note": "weights that fit in the last-level cache (fc1: 14-17 MB) are read from cache on repeat runs; "
        "the LM head (65-130 MB) is the memory-bound case",
        "kernels": rows,
    }
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        print(
            f"int{r['bits']} block {r['block_size']:>3} {r['k']}→{r['n']:>5}: {r['p50_ms']:.3f} ms, "
            f"{r['weights_read_gbs']:.1f} GB/s = {100 * r['fraction_of_copy_bandwidth']:.0f} % of copy, "
            f"{100 * r['fraction_of_read_bandwidth']:.0f} % of read"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
