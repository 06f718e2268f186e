"""Where a decode step's time goes: onnxruntime's own profile of a shared-KV export's decoder, per op type.

Prefills P positions (one camera frame + a short prompt: 697), then profiles N decode steps after it; the
prefill's events are left out. The cache is bound as the backend binds it (one buffer per past tensor,
past and present the same memory).

    python benchmarks/decoder_profile.py .cache/bench/phi2-2l-int4-b256-shared \\
        .cache/bench/phi2-2l-int4-b256-shared-kv8 --json benchmarks/results/decoder_profile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lphi_edge.export.manifest import Manifest


def profile(export: str, positions: int, steps: int, threads: int) -> dict:
    manifest = Manifest.load(export, verify_checksums=False)
    spec = manifest.text
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "decoder")
    sess = ort.InferenceSession(
        str(manifest.part_file("decoder_model_merged")), options, providers=["CPUExecutionProvider"]
    )
    past = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    dtype = np.int8 if past[0].type == "tensor(int8)" else np.float32
    shape = (1, spec["num_kv_heads"], 1024, spec["head_dim"])  # (1, H, capacity, Dh)
    buffers = [np.zeros(shape, dtype) for _ in past]  # the OrtValues below wrap this memory
    binding = sess.io_binding()
    for i, b in zip(past, buffers):
        v = ort.OrtValue.ortvalue_from_numpy(b)
        binding.bind_ortvalue_input(i.name, v)
        binding.bind_ortvalue_output(i.name.replace("past_key_values", "present"), v)

    def run(embeds: np.ndarray, start: int) -> float:
        s = embeds.shape[1]  # embeds (1, S, D)
        binding.bind_cpu_input("inputs_embeds", embeds)
        binding.bind_cpu_input("attention_mask", np.ones((1, start + s), np.int64))
        binding.bind_cpu_input("position_ids", np.arange(start, start + s)[None])
        binding.bind_output("logits", "cpu")
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        return (time.perf_counter() - t0) * 1e3

    rng = np.random.default_rng(0)
    d = spec["hidden_size"]
    run((rng.standard_normal((1, positions, d)) * 0.5).astype(np.float32), 0)
    step = (rng.standard_normal((1, 1, d)) * 0.5).astype(np.float32)
    times = [run(step, positions + i) for i in range(steps)]
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted(e["ts"] + e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    prefill_end = runs[0]
    per_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > prefill_end:
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {
        "export": export,
        "step_ms_p50": round(statistics.median(times), 3),
        "kernels_ms_per_step": round(total / steps / 1e3, 3),
        "share": {op: round(us / total, 4) for op, us in per_op.most_common()},
        "ms_per_step": {op: round(us / steps / 1e3, 3) for op, us in per_op.most_common()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("exports", nargs="+", help="export directories (kv_cache 'shared')")
    p.add_argument("--positions", type=int, default=697)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    out = {"positions": args.positions, "steps": args.steps, "threads": args.threads, "profiles": []}
    for export in args.exports:
        prof = profile(export, args.positions, args.steps, args.threads)
        out["profiles"].append(prof)
        shares = ", ".join(f"{op} {s:.1%}" for op, s in list(prof["share"].items())[:4])
        print(f"{export}: step {prof['step_ms_p50']:.2f} ms; {shares}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
