"""The benchmark's Markdown table and PNG (stacked stage bars per result).

Every speed-up cell names the baseline it divides (e.g. "vs transformers/fp16"), and the row names the engine's
own precision, so a speed-up always states both precisions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STACK = ("preprocess", "vision", "prefill", "decode")


COLUMNS = (
    "result", "preprocess", "vision", "prefill", "TTFT", "decode/token", "tokens/s", "end to end",
    "decode floor: copy / read", "decode ÷ floor: copy rate beside / best",
    "× transformers generate() (decode / TTFT / vision, vs baseline)",
    "weights MB", "RSS MB: engine / process peak",
)  # fmt: skip
EXTRAPOLATED = (
    "result",
    "decode/token ms",
    "tokens/s",
    "prefill ms",
    "one frame → one-word answer ms",
    "decode floor ms",
)


def _samples(m: dict[str, Any]) -> str:
    n = len(m.get("memory_bandwidth_samples_gbs") or ())
    return f" (the best of {n} measurements, before and after every engine's run)" if n > 1 else ""


def _int8_rate(m: dict[str, Any]) -> str:
    return f" / {m['compute_gflops_int8']} int8" if m.get("compute_gflops_int8") else ""


def _read(m: dict) -> str:
    return f", read-only {m['memory_read_gbs']} GB/s" if "memory_read_gbs" in m else ""


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def rows_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Engines, then the transformers baselines (one per precision; older results hold one "baseline")."""
    baselines = result.get("baselines")
    if baselines is None:
        baselines = [result["baseline"]] if result.get("baseline") else []
    return [*result["results"], *baselines]


def _threads(rows: list[dict[str, Any]]) -> str:
    """The Setting line's tail naming each engine's CPU thread pools as recorded (absent in older results)."""
    parts = [
        f"{r['key']} " + ", ".join(f"{k} {v or 'default'}" for k, v in r["threads"].items() if k != "note")
        for r in rows
        if r.get("threads")
    ]
    return f" CPU threads: {'; '.join(parts)}." if parts else ""


def _speed(x: dict[str, Any] | None) -> str:
    if not x:
        return "—"
    cell = " / ".join("—" if x[k] is None else f"{x[k]}×" for k in ("decode_per_token", "ttft", "vision"))
    return f"{cell} vs {x['baseline']}" if "baseline" in x else cell


def markdown(result: dict[str, Any]) -> str:
    m, st = result["machine"], result["setting"]
    rows = rows_of(result)
    sp = result.get("speedup_vs_baseline") or {}
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    gpu_mem = any(r.get("gpu_peak_mb") is not None for r in rows)
    columns = [*COLUMNS, "peak GPU MB (all engines loaded)"] if gpu_mem else list(COLUMNS)
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, {m['memory']}{gpu}; "
        f"measured {'on the GPU' if str(m.get('floors_measured_on')).startswith('cuda') else 'on the CPU'}: "
        "copy bandwidth "
        f"{m['memory_bandwidth_gbs']} GB/s (read + write){_read(m)}{_samples(m)}, "
        f"matmul {m['compute_gflops_fp32']} GFLOP/s fp32 / "
        f"{m['compute_gflops_bf16']} bf16{_int8_rate(m)} (vision and prefill floors use the faster float rate"
        f"{'; the linears of int8 engines the int8 rate' if m.get('compute_gflops_int8') else ''}).",
        f"Setting: {st['prompt_positions']} prompt positions, {st['new_tokens']} new tokens, "
        f"p50 of {st['runs']} interleaved runs after {st['warmup']} warm-up.{_threads(rows)}",
        "",
        _row(columns),
        _row(["---"] * len(columns)),
    ]
    for r in rows:
        s, speed = r["stages_ms"], _speed(sp.get(r["key"]))
        floor = f"{r['decode_floor_ms']:.2f} ({100 * r['floor_fraction']['decode']:.0f} %)"
        if "decode_floor_read_ms" in r:
            floor += f" / {r['decode_floor_read_ms']:.2f} ({100 * r['floor_fraction']['decode_read']:.0f} %)"
        cells = [f"{s[k]['p50']:.1f}" for k in ("preprocess", "vision", "prefill")]
        frac = r["floor_fraction"]
        times = f"{1 / frac['decode']:.2f}×" if frac["decode"] else "—"  # 0: a floor too small to record
        if frac.get("decode_beside"):
            times = f"{1 / frac['decode_beside']:.2f}× / {times}"
        lines.append(
            _row(
                [r["key"], *cells, f"{r['ttft_ms']['p50']:.1f}", f"{s['decode_per_token']['p50']:.2f}"]
                + [f"{r['decode_tokens_per_s']:.1f}", f"{s['end_to_end']['p50']:.1f}", floor, times, speed]
                + [f"{r['weights_mb']:.0f}", f"{_num(r.get('load_rss_mb'))} / {r['peak_rss_mb']:.0f}"]
                + ([f"{r['gpu_peak_mb']:.0f}"] if gpu_mem else [])
            )
        )
    ext = [r for r in rows if r.get("extrapolated_32_layers")]
    if ext:
        lines += ["", "**Extrapolated to full-size LLaVA-Phi (32 decoder layers)** — not measured whole:", ""]
        lines += [_row(list(EXTRAPOLATED)), _row(["---"] * len(EXTRAPOLATED))]
        for r in ext:
            e = r["extrapolated_32_layers"]
            lines.append(
                _row(
                    [r["key"], f"{e['decode_per_token_ms']:.1f}", f"{e['decode_tokens_per_s']:.1f}"]
                    + [
                        f"{e['prefill_ms']:.0f}",
                        f"{e['one_frame_one_word_answer_ms']:.0f}",
                        f"{e['decode_floor_ms']:.1f}",
                    ]
                )
            )
        lines += ["", ext[0]["extrapolated_32_layers"]["note"]]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows_of(result)
    n = result["setting"]["new_tokens"]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(rows)))
    left = [0.0] * len(rows)
    for stage in STACK:
        key = "decode_per_token" if stage == "decode" else stage
        vals = [r["stages_ms"][key]["p50"] * ((n - 1) if stage == "decode" else 1) for r in rows]
        ax.barh(
            [r["key"] for r in rows],
            vals,
            left=left,
            label=f"{stage}" + (f" ({n - 1} tokens)" if stage == "decode" else ""),
        )
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("ms (p50)")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / len(rows)), ncol=len(STACK), fontsize="small")
    ax.set_title("lphi-bench: time per stage")
    fig.tight_layout()
    fig.savefig(png, dpi=120, bbox_inches="tight")  # the legend sits below the axes
    plt.close(fig)
