"""Where a decode step's time goes: onnxruntime's own profile of a shared-KV export's decoder, per op type.

Prefills P positions (one camera frame + a short prompt: 697), then profiles N decode steps after it, the
exports interleaved in blocks of 8 steps; the prefill's events are left out. The cache is bound as the
backend binds it (one buffer per past tensor, past and present the same memory).

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

from lphi_edge.format.manifest import Manifest


class _Profiled:
    """An export's decoder in a profiling session, its cache bound as the backend binds it."""

    def __init__(self, export: str, threads: int):
        self.export = export
        manifest = Manifest.load(export, verify_checksums=False)
        self.spec = manifest.text
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        # several sessions take turns on 2 cores here: one's idle pool threads spinning would slow the next
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "decoder")
        part = str(manifest.part_file("decoder_model_merged"))
        self.sess = ort.InferenceSession(part, options, providers=["CPUExecutionProvider"])
        past = [i for i in self.sess.get_inputs() if i.name.startswith("past_key_values.")]
        dtype = np.int8 if past[0].type == "tensor(int8)" else np.float32
        shape = (1, self.spec.num_kv_heads, 1024, self.spec.head_dim)  # (1, H, capacity, Dh)
        self.buffers = [np.zeros(shape, dtype) for _ in past]  # the OrtValues below wrap this memory
        self.binding = self.sess.io_binding()
        for i, b in zip(past, self.buffers):
            v = ort.OrtValue.ortvalue_from_numpy(b)
            self.binding.bind_ortvalue_input(i.name, v)
            self.binding.bind_ortvalue_output(i.name.replace("past_key_values", "present"), v)
        self.times: list[float] = []

    def run(self, embeds: np.ndarray, start: int) -> None:
        s = embeds.shape[1]  # embeds (1, S, D) at positions start .. start + S - 1
        self.binding.bind_cpu_input("inputs_embeds", embeds)
        self.binding.bind_cpu_input("attention_mask", np.ones((1, start + s), np.int64))
        self.binding.bind_cpu_input("position_ids", np.arange(start, start + s)[None])
        self.binding.bind_output("logits", "cpu")
        t0 = time.perf_counter()
        self.sess.run_with_iobinding(self.binding)
        if s == 1:
            self.times.append((time.perf_counter() - t0) * 1e3)

    def report(self) -> dict:
        """Per op type over the decode steps (the prefill, the first run, left out)."""
        events = json.loads(Path(self.sess.end_profiling()).read_text())
        runs = sorted(e["ts"] + e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
        per_op: Counter[str] = Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > runs[0]:
                per_op[e["args"]["op_name"]] += e["dur"]
        total, steps = sum(per_op.values()), len(self.times)
        return {
            "export": self.export,
            "step_ms_p50": round(statistics.median(self.times), 3),
            "kernels_ms_per_step": round(total / steps / 1e3, 3),
            "share": {op: round(us / total, 4) for op, us in per_op.most_common()},
            "ms_per_step": {op: round(us / steps / 1e3, 3) for op, us in per_op.most_common()},
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("exports", nargs="+", help="export directories (kv_cache 'shared')")
    p.add_argument("--positions", type=int, default=697)
    p.add_argument("--steps", type=int, default=64, help="decode steps per export, in interleaved blocks of 8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    decoders = [_Profiled(e, args.threads) for e in args.exports]
    rng = np.random.default_rng(0)
    d = decoders[0].spec.hidden_size
    prompt = (rng.standard_normal((1, args.positions, d)) * 0.5).astype(np.float32)  # (1, P, D)
    step = (rng.standard_normal((1, 1, d)) * 0.5).astype(np.float32)  # (1, 1, D)
    for dec in decoders:
        dec.run(prompt, 0)
    for _ in range(max(args.steps // 8, 1)):  # interleaved: the machine's memory state moves within seconds
        for dec in decoders:
            for i in range(8):
                dec.run(step, args.positions + i)
    out = {"positions": args.positions, "steps": args.steps, "threads": args.threads, "interleaved_blocks": 8}
    out["profiles"] = [dec.report() for dec in decoders]
    for prof in out["profiles"]:
        shares = ", ".join(f"{op} {s:.1%}" for op, s in list(prof["share"].items())[:4])
        print(f"{prof['export']}: step {prof['step_ms_p50']:.2f} ms; {shares}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
