"""Measure every model in one process, interleaved after warm-up, next to the transformers baseline and the
machine's floor.

The baseline is transformers' eager generate() in the precision of the engine it is compared with
(`baseline_precision`): one baseline per precision needed, and every speed-up records which it used, so
e.g. fp16 + CUDA graphs is compared with fp16 transformers, not with fp32.

Rows of one engine (same loaded engine, interleaved with the others): `--visual-tokens K,...` adds a row per
K (the LM fed K of the N image tokens); `--reused-frame` adds a row whose timed question is about a new
capture of the frame asked about just before (sensor noise and JPEG, data/camera.py) with frame reuse on: its
features and image positions come from the caches. That row also times the same question asked once more
(a stored greedy answer: `stored_answer_ttft_ms`).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lphi_edge.bench.costs import PHI2_HIDDEN, PHI2_LAYERS, Arch
from lphi_edge.bench.machine import compute_gflops, machine_info, memory_bandwidth_gbs, memory_read_gbs, rss_mb
from lphi_edge.data.camera import Camera
from lphi_edge.errors import ConfigError
from lphi_edge.runtime.backend import TORCH_DTYPES
from lphi_edge.runtime.device import check_threads, parse_device
from lphi_edge.runtime.generation import GenerationConfig
from lphi_edge.runtime.visual_tokens import VisualTokens

logger = logging.getLogger(__name__)
STAGES = ("preprocess", "vision", "prefill", "decode_per_token", "end_to_end")
DEFAULT_PROMPT = "What is in front of the robot? Answer with one word."
REUSED_FRAME_FIRST_PROMPT = "Describe the scene."  # asked about the first capture before a reused-frame run
REUSED_FRAME_CAMERA = Camera(noise=2.0, jpeg_quality=95)  # a reused-frame run's captures (ROS compressed: q 95)
EXPORT_FLAGS = {
    "fp32": [],
    "fp16": ["--fp16"],
    "int8": ["--quant", "int8"],
    "int4": ["--quant", "int4"],
    "int4-b128": ["--quant", "int4", "--block-size", "128"],  # fewer scales: less to read per token
    "int4-b256": ["--quant", "int4", "--block-size", "256"],  # fewest scales; MLAS's fastest int4 kernel on AVX-512
    # the KV cache written in place (GroupQueryAttention) instead of copied whole every token
    "int8-shared": ["--quant", "int8", "--kv-cache", "shared"],
    "int4-b128-shared": ["--quant", "int4", "--block-size", "128", "--kv-cache", "shared"],
    "int4-b256-shared": ["--quant", "int4", "--block-size", "256", "--kv-cache", "shared"],
    # ... and kept as int8 (per-channel scales calibrated on the PyTorch model): a quarter of the cache bytes
    "int4-b256-shared-kv8": ["--quant", "int4", "--block-size", "256", "--kv-cache", "shared", "--kv-quant", "int8"],
    "int8-vision": ["--quant", "int8", "--quant-vision"],  # the vision encoder's MatMuls in int8 too
}
HF_DTYPES = ("fp32", "fp16", "bf16")  # what transformers' generate() runs the checkpoint in


def baseline_precision(backend: str, precision: str, cuda: bool) -> str:
    """The precision transformers' generate() is measured in for an engine: a torch engine's own; an export's
    when transformers runs it natively there (fp32, and fp16 / bf16 on a GPU); otherwise what a transformers
    user would run on that device instead (fp16 on a GPU, fp32 on a CPU, e.g. for int8 / int4 exports)."""
    if precision in HF_DTYPES and (backend == "torch" or cuda or precision == "fp32"):
        return precision
    return "fp16" if cuda else "fp32"


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...]
    backend: str | None = None
    device: str = "cpu"
    image: str | None = None
    prompt: str = DEFAULT_PROMPT
    new_tokens: int = 32
    runs: int = 5
    warmup: int = 1
    threads: int | None = None  # torch's and onnxruntime's intra-op threads (None: each library's default)
    provider: str | None = None  # onnxruntime's execution provider for exports: cpu | cuda | tensorrt
    baseline: str | None = None  # "hf"
    synthetic_config: str | None = None
    synthetic_exports: tuple[str, ...] = ()
    work: str = ".cache/lphi-bench"
    torch_dtypes: tuple[str, ...] = ("fp32",)  # each checkpoint is measured in each
    cuda_graphs: str = "on"  # torch backend on CUDA: "on", "off" (eager decode) or "both", side by side
    torch_compile: str = "off"  # torch backend: "on" (compiled vision + prefill), "off" (eager) or "both"
    visual_tokens: tuple[int, ...] = ()  # a row per K (per engine) beside the all-tokens row
    reused_frame: bool = False  # a row per engine: a new capture of the frame just asked about, frame reuse on
    phased: tuple[tuple[str, str], ...] = ()  # (prompt engine, token engine) pairs: labels or model directory names

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", str(parse_device(self.device)))  # canonical: cpu, cuda, cuda:N
        for k in self.visual_tokens:
            VisualTokens.of(k)  # K ≥ 1 here; K ≤ N once each model is loaded
        check_threads(self.threads, "--threads")
        if not self.torch_dtypes or any(d not in TORCH_DTYPES for d in self.torch_dtypes):
            raise ConfigError(f"--torch-dtypes must name {' / '.join(TORCH_DTYPES)}, got {self.torch_dtypes}")
        if not self.models and not self.synthetic_config:
            raise ConfigError("give at least one --model (or --synthetic-config)")
        if self.new_tokens < 2:
            raise ConfigError(f"--new-tokens must be ≥ 2 (decode per token needs two), got {self.new_tokens}")
        if self.runs < 1 or self.warmup < 0:
            raise ConfigError(f"--runs must be ≥ 1 and --warmup ≥ 0, got {self.runs} / {self.warmup}")
        for flag, value in (("--cuda-graphs", self.cuda_graphs), ("--torch-compile", self.torch_compile)):
            if value not in ("on", "off", "both"):
                raise ConfigError(f"{flag} must be on, off or both, got {value!r}")
        if self.cuda and self.cuda_graphs == "on" and self.torch_compile == "on":
            raise ConfigError(
                "--cuda-graphs on with --torch-compile on: the torch backend cannot combine them (graphs replay a "
                "static KV cache, the compiled prefill fills a dynamic one); use --cuda-graphs both or off"
            )
        if self.baseline not in (None, "hf"):
            raise ConfigError(f"--baseline must be hf, got {self.baseline!r}")
        bad = [p for p in self.synthetic_exports if p not in EXPORT_FLAGS]
        if bad:
            raise ConfigError(f"--synthetic-exports: unknown precision(s) {bad}: expected some of {list(EXPORT_FLAGS)}")

    @property
    def cuda(self) -> bool:
        return parse_device(self.device).is_cuda


@dataclass
class Target:
    label: str
    runner: Any  # Assistant or HFBaseline
    backend: str
    precision: str
    device: str
    model: str
    load_s: float
    weights_mb: float
    decode_bytes: float  # weights read per decoded token
    arch: Arch | None
    load_rss_mb: float  # resident memory the process grew by while loading this engine
    kv_cache: str | None = None  # an export's decoder cache: "concat", "shared" or "shared/int8"
    phases: tuple[Target, Target] | None = None  # an engine pair: (prompt engine, token engine), both loaded above
    visual_tokens: int | None = None  # K image tokens fed to the LM (None: all N)
    reused_frame: bool = False  # the timed question is about a new capture of the frame asked about before
    samples: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in (*STAGES, "ttft")})
    copy_gbs_before: list[float] = field(default_factory=list)  # the copy rate measured just before each run
    copy_gbs: list[float] = field(default_factory=list)  # ... and just after it: beside the decode, which ends a run
    peak_rss_mb: float = 0.0
    gpu_peak_mb: float | None = None


def _checkpoint_arch(path: Path) -> Arch | None:
    try:
        from lphi_edge.model.config import LlavaPhiConfig

        return Arch.from_config(LlavaPhiConfig.from_dir(path))
    except Exception:  # noqa: BLE001 - runtime-only installs (no transformers) have no architecture costs
        return None


def load_targets(model: str, cfg: BenchConfig) -> list[Target]:
    """An export directory: one target; a checkpoint: one per torch dtype."""
    from lphi_edge.format.manifest import is_export_dir
    from lphi_edge.format.shipped import resolve_model_dir

    if is_export_dir(resolve_model_dir(model, cfg.backend)):
        return [load_target(model, cfg)]
    return [load_target(model, cfg, dtype, g, c) for dtype, g, c in torch_engines(cfg)]


def torch_engines(cfg: BenchConfig) -> list[tuple[str, bool | None, bool]]:
    """(dtype, cuda_graphs, torch_compile) of each torch engine a checkpoint is loaded as: every combination the
    flags ask for, but CUDA graphs with a compiled prefill — the torch backend runs those on different KV caches
    (static / dynamic) and refuses the pair; with both flags at `both` a GPU gets eager, graphs and compiled
    (eager decode) rows. cuda_graphs None: not on CUDA."""
    choices = {"on": [True], "off": [False], "both": [True, False]}
    graphs = choices[cfg.cuda_graphs] if cfg.cuda else [None]
    compiled = choices[cfg.torch_compile][::-1]  # eager first
    return [(d, g, c) for d in cfg.torch_dtypes for g in graphs for c in compiled if not (g and c)]


def load_target(
    model: str,
    cfg: BenchConfig,
    dtype: str | None = None,
    cuda_graphs: bool | None = None,
    torch_compile: bool = False,
) -> Target:
    from lphi_edge.assistant import Assistant
    from lphi_edge.format.manifest import Manifest, is_export_dir
    from lphi_edge.format.shipped import resolve_model_dir

    path = resolve_model_dir(model, cfg.backend)
    extra: dict[str, Any] = {} if cuda_graphs is None else {"cuda_graphs": cuda_graphs}
    if torch_compile:
        extra["torch_compile"] = True
    if cfg.provider is not None and is_export_dir(path):
        extra["provider"] = cfg.provider
    assistant, load_s, load_rss = _load(
        lambda: Assistant.from_pretrained(
            path, backend=cfg.backend, device=cfg.device, dtype=dtype, threads=cfg.threads, **extra
        )
    )
    be = assistant.backend
    if is_export_dir(path):
        manifest = Manifest.load(path, verify_checksums=False)  # the backend has just checked it
        weights, decode = manifest.weight_bytes(), manifest.weight_bytes("decoder_model_merged")
        source = manifest.source_checkpoint
        arch = _checkpoint_arch(source) if source is not None and source.is_dir() else None
        kv_quant = manifest.kv_quant
        kv_cache = manifest.kv_cache + (f"/{kv_quant.dtype}" if kv_quant else "")  # e.g. "shared/int8"
    else:
        weights, decode = _torch_bytes(be.model)
        arch, kv_cache = Arch.from_config(be.model.config), None
    label = f"{be.name}/{be.precision}"
    if cuda_graphs is not None:
        label += " (CUDA graphs)" if cuda_graphs else " (eager decode)"
    if torch_compile:
        label += " (compiled)"
    return Target(
        label, assistant, be.name, be.precision, be.device, str(model), load_s, weights / 2**20, decode, arch, load_rss,
        kv_cache,
    )  # fmt: skip


def pair_target(prompt: Target, tokens: Target) -> Target:
    """The two loaded engines as one Assistant (Assistant.phased): frames and prefill on `prompt`, tokens on
    `tokens`. Weights and resident memory are both engines' (each one's share is in its own row)."""
    from lphi_edge.assistant import Assistant

    assistant = Assistant.phased(prompt.runner, tokens.runner)
    be = assistant.backend
    return Target(
        f"{prompt.label} → {tokens.label}", assistant, be.name, be.precision, be.device,
        f"{prompt.model} + {tokens.model}", prompt.load_s + tokens.load_s, prompt.weights_mb + tokens.weights_mb,
        tokens.decode_bytes, prompt.arch or tokens.arch, prompt.load_rss_mb + tokens.load_rss_mb, tokens.kv_cache,
        phases=(prompt, tokens),
    )  # fmt: skip


def find_engine(targets: list[Target], name: str) -> Target:
    """The one loaded engine `name` names: its label (e.g. torch/bf16) or its model directory's name."""
    found = [t for t in targets if name in (t.label, Path(t.model).name)]
    if len(found) != 1:
        known = sorted({t.label for t in targets} | {Path(t.model).name for t in targets})
        why = "names no loaded engine" if not found else f"names {len(found)} engines"
        raise ConfigError(f"--phased: {name!r} {why}: give one of {known}")
    return found[0]


def variants(t: Target, cfg: BenchConfig) -> list[Target]:
    """The engine's rows: all tokens, each K of --visual-tokens (K = N is the all-tokens row), a reused frame.
    They share the loaded engine; each has its own samples."""
    if t.backend == "transformers":
        return [t]
    n = t.runner.backend.spec.image_tokens
    for k in cfg.visual_tokens:
        VisualTokens(k).check(n)
    rows = [t]
    rows += [_variant(t, f"{t.label}, K={k}", visual_tokens=k) for k in dict.fromkeys(cfg.visual_tokens) if k != n]
    if cfg.reused_frame:
        rows.append(_variant(t, f"{t.label}, reused frame", reused_frame=True))
    return rows


def _variant(t: Target, label: str, **changes: Any) -> Target:
    fresh = {"samples": {s: [] for s in (*STAGES, "ttft")}, "copy_gbs_before": [], "copy_gbs": []}
    return replace(t, label=label, peak_rss_mb=0.0, gpu_peak_mb=None, **fresh, **changes)


def load_baseline(model: str, cfg: BenchConfig, dtype: str = "fp32") -> Target:
    """transformers' generate() on the checkpoint `model` in `dtype`, labelled e.g. "transformers/fp16"."""
    from lphi_edge.bench.hf import HFBaseline
    from lphi_edge.format.shipped import resolve_model_dir

    path = resolve_model_dir(model)
    hf, load_s, load_rss = _load(lambda: HFBaseline(path, cfg.device, dtype))
    weights, decode = _torch_bytes(hf.model)
    arch = Arch.from_config(hf.model.config)
    return Target(
        f"transformers/{dtype}", hf, "transformers", dtype, cfg.device, str(model), load_s, weights / 2**20, decode,
        arch, load_rss,
    )  # fmt: skip


def load_baselines(targets: list[Target], cfg: BenchConfig) -> dict[str, Target]:
    """One transformers baseline per precision the engines need (see baseline_precision), on the first
    checkpoint measured, else the one the first export was made from; keyed by precision, in first-use order."""
    # else the checkpoint each export's manifest (as its backend loaded it) names as its source
    singles = [t for t in targets if t.phases is None]
    ckpts = [t.model for t in singles if t.backend == "torch"] or [
        str(t.runner.backend.manifest.source_checkpoint) for t in singles
    ]
    precisions = dict.fromkeys(_baseline_precision(t, cfg.cuda) for t in targets)
    return {p: load_baseline(ckpts[0], cfg, p) for p in precisions}


def _baseline_precision(t: Target, cuda: bool) -> str:
    """An engine pair is compared with transformers in its prompt engine's baseline precision."""
    first = t.phases[0] if t.phases else t
    return baseline_precision(first.backend, first.precision, cuda)


def _load(make: Callable[[], Any]) -> tuple[Any, float, float]:
    """(make(), seconds it took, MB the process's resident memory grew by meanwhile)."""
    rss0, t0 = rss_mb(), time.perf_counter()
    obj = make()
    return obj, time.perf_counter() - t0, max(0.0, rss_mb() - rss0)


def _torch_bytes(model) -> tuple[int, int]:
    """(all weight bytes, bytes read per decoded token: the LM without its embedding table)."""
    nbytes = {k: p.numel() * p.element_size() for k, p in model.named_parameters()}
    decode = sum(v for k, v in nbytes.items() if k.startswith("language_model.") and "embed_tokens" not in k)
    return sum(nbytes.values()), decode


def _once(t: Target, image: np.ndarray, cfg: BenchConfig, rng: np.random.Generator) -> dict[str, float]:
    if t.backend == "transformers":
        return t.runner.run(image, cfg.prompt, cfg.new_tokens)
    a = t.runner
    a.configure(visual_tokens=t.visual_tokens, frame_reuse=t.reused_frame)  # this row's settings, one engine
    a.reset()  # no KV prefix, feature cache or stored answer carried between runs
    scene = image
    if t.reused_frame:  # the scene was seen a moment ago (another question); now a new capture of it
        a.ask(REUSED_FRAME_CAMERA.capture(scene, rng), REUSED_FRAME_FIRST_PROMPT, max_new_tokens=1)
        image = REUSED_FRAME_CAMERA.capture(scene, rng)
    t0 = time.perf_counter()
    config = GenerationConfig(max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens)
    ans = a.ask(image, cfg.prompt, config=config)
    e2e = (time.perf_counter() - t0) * 1e3
    tm = ans.timings
    out = {
        "preprocess": tm.preprocess_ms,
        "vision": tm.vision_ms,
        "prefill": tm.prefill_ms,
        "ttft": tm.ttft_ms,
        "decode_per_token": tm.decode_ms / max(tm.new_tokens - 1, 1),
        "end_to_end": e2e,
        "prefilled_positions": tm.prompt_tokens - tm.cached_tokens,
    }
    if t.reused_frame:
        if not tm.frame_reused:
            raise ConfigError(
                f"{t.label}: the new capture was not reused (frame difference {tm.frame_difference:.2f} > tolerance "
                f"{a.frame_reuse.tolerance}): the reused-frame row would time a cold frame"
            )
        again = a.ask(REUSED_FRAME_CAMERA.capture(scene, rng), cfg.prompt, config=config)  # a stored answer
        if not again.timings.answer_reused:
            raise ConfigError(f"{t.label}: the same question about a third capture was not answered as stored")
        out |= {"frame_difference": tm.frame_difference, "stored_answer_ttft": again.timings.ttft_ms}
    return out


def _synthetic_models(cfg: BenchConfig) -> list[str]:
    """The random-weight checkpoint `cfg.synthetic_config` (and its exports), made once under cfg.work."""
    from lphi_edge.model.synthetic import write_synthetic_checkpoint

    work = Path(cfg.work)
    ckpt = work / cfg.synthetic_config
    if not (ckpt / "config.json").is_file():
        logger.info("writing synthetic checkpoint %s", ckpt)
        write_synthetic_checkpoint(ckpt, cfg.synthetic_config)
    out = [str(ckpt)]
    for prec in cfg.synthetic_exports:
        exp = work / f"{cfg.synthetic_config}-{prec}"
        if not (exp / "manifest.json").is_file():
            logger.info("exporting %s (%s)", exp, prec)
            cmd = [str(Path(sys.executable).with_name("lphi-export")), str(ckpt), "--out", str(exp), "--overwrite"]
            subprocess.run([*cmd, *EXPORT_FLAGS[prec]], check=True)
        out.append(str(exp))
    return out


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {f"p{q}": _sig(float(np.percentile(a, q)), 5) for q in (50, 90, 99)}


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # the floors' tests and the transformers baseline run on torch
    threads = torch.get_num_threads()
    models = list(cfg.models) + (_synthetic_models(cfg) if cfg.synthetic_config else [])
    image = _image(cfg.image)
    engines = [t for m in models for t in load_targets(m, cfg)]
    pairs = [pair_target(find_engine(engines, a), find_engine(engines, b)) for a, b in cfg.phased]
    targets = [v for t in engines + pairs for v in variants(t, cfg)]
    baselines = load_baselines(targets, cfg) if cfg.baseline == "hf" else {}
    everyone = targets + list(baselines.values())
    logger.info("measuring the machine's floor (copy, read and matmul tests)")
    dev = cfg.device
    # On a VM the memory rates move with the neighbours' load (by 2× within minutes; benchmarks/results/NOTES.md).
    # The copy rate is measured again just before and just after every measured run of every engine. A run
    # ends with its decode, so the rate after it is the one beside the decode (it tracks the decode's speed
    # more closely than the rate before: benchmarks/README.md): each result's decode gets a floor from the
    # rate beside each of its runs, and the strict floor uses the best rate seen during the whole run.
    copy_samples, read_samples = [memory_bandwidth_gbs(device=dev)], [memory_read_gbs(device=dev)]
    fp32_gflops, bf16_gflops = compute_gflops(device=dev), compute_gflops(dtype="bf16", device=dev)
    int8_gflops = compute_gflops(dtype="int8", device=dev) if any(_int8_linears(t) for t in targets) else None
    # float compute: the faster of fp32 and bf16; an engine with int8 linears: those at the int8 rate (_result)
    rates = {"float": max(fp32_gflops, bf16_gflops), "int8": int8_gflops}
    cuda = cfg.cuda
    rng = np.random.default_rng(0)  # the reused-frame rows' captures
    for r in tqdm(range(cfg.warmup + cfg.runs), desc="lphi-bench", unit="round"):
        if r:
            read_samples.append(memory_read_gbs(device=dev, repeats=3))
        for t in everyone:  # interleaved: each round measures every model once
            measured = r >= cfg.warmup
            if measured:
                t.copy_gbs_before.append(memory_bandwidth_gbs(device=dev, repeats=2))
                copy_samples.append(t.copy_gbs_before[-1])
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            stages = _once(t, image, cfg, rng)
            if measured:
                t.copy_gbs.append(memory_bandwidth_gbs(device=dev, repeats=2))
                copy_samples.append(t.copy_gbs[-1])
            t.peak_rss_mb = max(t.peak_rss_mb, rss_mb())
            if cuda:
                t.gpu_peak_mb = max(t.gpu_peak_mb or 0.0, torch.cuda.max_memory_allocated(dev) / 2**20)
            if measured:
                for k, v in stages.items():
                    t.samples.setdefault(k, []).append(v)
    bandwidth, read_bw = max(copy_samples), max(read_samples)
    prompt_positions = _prompt_positions(targets[0], cfg.prompt)
    results = [_result(t, bandwidth, read_bw, rates, _prefilled(t, prompt_positions), cfg) for t in targets]
    keys = [r["key"] for r in results]
    for r in results:  # two models with one backend/precision: tell them apart by model
        if keys.count(r["key"]) > 1:
            r["key"] = f"{r['key']} ({Path(r['model']).name})"
    bases = {p: _result(b, bandwidth, read_bw, rates, prompt_positions, cfg) for p, b in baselines.items()}
    speedup = {
        res["key"]: _speedup(res, bases[_baseline_precision(t, cuda)]) for t, res in zip(targets, results) if bases
    }
    return {
        "machine": machine_info(threads, dev)
        | {
            "floors_measured_on": dev,
            "memory_bandwidth_gbs": round(bandwidth, 2),  # copy test, bytes read + written (STREAM's count)
            "memory_read_gbs": round(read_bw, 2),  # read-only test (a sum)
            "memory_bandwidth_samples_gbs": [round(x, 2) for x in copy_samples],  # before + after each engine's runs
            "memory_read_samples_gbs": [round(x, 2) for x in read_samples],  # before each round
            "compute_gflops_fp32": round(fp32_gflops, 1),
            "compute_gflops_bf16": round(bf16_gflops, 1),
            "compute_gflops_int8": None if int8_gflops is None else round(int8_gflops, 1),  # when an engine uses it
        },
        "command": None,  # filled in by the CLI
        "setting": {
            "prompt": cfg.prompt,
            "image": cfg.image or "lphi_edge/assets/sample_frame.png",
            "new_tokens": cfg.new_tokens,
            "runs": cfg.runs,
            "warmup": cfg.warmup,
            "prompt_positions": prompt_positions,
            "synthetic_config": cfg.synthetic_config,
            "interleaved": True,
        },
        "results": results,
        "baseline": bases.get("fp32") or next(iter(bases.values()), None),  # one of "baselines", fp32 if measured
        "baselines": list(bases.values()),  # transformers' generate(), one per precision the engines needed
        "speedup_vs_baseline": speedup or None,  # each against the baseline named in its "baseline"
    }


def _speedup(res: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """p50 baseline ÷ p50 engine per stage and TTFT, and which baseline (hence which precision) that was."""
    out: dict[str, Any] = {  # None: the engine skipped the stage (a reused frame's vision encoder)
        s: _sig(base["stages_ms"][s]["p50"] / res["stages_ms"][s]["p50"]) if res["stages_ms"][s]["p50"] else None
        for s in STAGES
    }
    out["ttft"] = _sig(base["ttft_ms"]["p50"] / max(res["ttft_ms"]["p50"], 1e-9))
    out["baseline"] = base["key"]
    return out


def _sig(x: float, digits: int = 3) -> float:
    """`x` to `digits` significant figures: figures of a tiny model (microseconds, floors, ratios) must not round
    to 0 on a fast machine, nor lose their precision to a fixed number of decimals."""
    return float(f"{x:.{digits}g}")


def _threads(t: Target) -> dict[str, Any]:
    """The CPU threads this engine ran with, read back from its library (torch / onnxruntime)."""
    return (t.runner if t.backend == "transformers" else t.runner.backend).thread_settings()


def _image(path: str | None) -> np.ndarray:
    from PIL import Image

    p = Path(path) if path else Path(__file__).resolve().parents[1] / "assets" / "sample_frame.png"
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


def _int8_linears(t: Target) -> bool:
    """Whether the engine computing a row's vision encoder and prefill runs its linears as int8 products (the
    torch backend's int8; onnxruntime's int8 / int4 MatMulNBits kernels may too, but the floor keeps them at the
    float rate: which kernel MLAS picks is not visible from here)."""
    prompt = t.phases[0] if t.phases else t
    return prompt.backend == "torch" and prompt.precision == "int8"


def _prompt_positions(t: Target, prompt: str) -> int:
    a = t.runner
    text = a.template.prompt([(prompt, None)], image=True)
    return len(a.tokenizer.encode_prompt(text)) - 1 + a.backend.spec.image_tokens


def _prefilled(t: Target, default: int) -> int:
    """The prompt positions a row's prefill computed (median of its runs; fewer with K tokens or a reused frame)."""
    xs = t.samples.get("prefilled_positions")
    return int(np.median(xs)) if xs else default


def _result(
    t: Target, bandwidth: float, read_bw: float, rates: dict[str, float | None], positions: int, cfg: BenchConfig
) -> dict[str, Any]:
    stages = {s: _pct(t.samples[s]) for s in STAGES}
    decode_floor = t.decode_bytes / (bandwidth * 1e9) * 1e3
    read_floor = t.decode_bytes / (read_bw * 1e9) * 1e3  # the same bytes at the read-only rate
    # beside: each run's decode against the copy rate measured right after it (the machine as it was then)
    beside = [t.decode_bytes / (bw * 1e9) * 1e3 for bw in t.copy_gbs]
    beside_fraction = [f / d for f, d in zip(beside, t.samples["decode_per_token"])]
    res: dict[str, Any] = {
        "key": t.label,
        "model": t.model,
        "backend": t.backend,
        "precision": t.precision,
        "device": t.device,
        "threads": _threads(t),
        "kv_cache": t.kv_cache,
        "visual_tokens": t.visual_tokens,
        "reused_frame": t.reused_frame,
        "prefilled_positions": positions,
        "stages_ms": stages,
        "ttft_ms": _pct(t.samples["ttft"]),
        "decode_tokens_per_s": round(1e3 / stages["decode_per_token"]["p50"], 2),
        "peak_rss_mb": round(t.peak_rss_mb, 1),  # the whole process, every engine loaded
        "load_rss_mb": round(t.load_rss_mb, 1),  # this engine's own share: growth while it loaded (a pair: both)
        "phases": None if t.phases is None else {"prompt": t.phases[0].label, "tokens": t.phases[1].label},
        "gpu_peak_mb": None if t.gpu_peak_mb is None else round(t.gpu_peak_mb, 1),
        "weights_mb": round(t.weights_mb, 1),
        "load_s": round(t.load_s, 2),
        "decode_floor_ms": _sig(decode_floor, 4),
        "decode_floor_read_ms": _sig(read_floor, 4),
        "decode_floor_beside_ms": _sig(float(np.median(beside)), 4) if beside else None,
        "copy_gbs_beside": [round(x, 2) for x in t.copy_gbs],  # right after each run, beside its decode
        "copy_gbs_before": [round(x, 2) for x in t.copy_gbs_before],  # right before each run
        "runs_ms": {s: [_sig(x, 5) for x in t.samples[s]] for s in (*STAGES, "ttft")},  # every measured run
        "vision_floor_ms": None,
        "prefill_floor_ms": None,
        "floor_fraction": {
            "decode": _sig(decode_floor / stages["decode_per_token"]["p50"]),
            "decode_read": _sig(read_floor / stages["decode_per_token"]["p50"]),
            "decode_beside": _sig(float(np.median(beside_fraction))) if beside_fraction else None,
        },
        "extrapolated_32_layers": None,
    }
    if t.reused_frame:
        res["frame_difference"] = _pct(t.samples["frame_difference"])
        res["stored_answer_ttft_ms"] = _pct(t.samples["stored_answer_ttft"])
    if t.arch is not None:
        linear_rate = rates["int8"] if _int8_linears(t) else rates["float"]
        v_linears, v_attention = t.arch.vision_flops_parts()
        p_linears, p_attention, p_head = t.arch.prefill_flops_parts(positions)
        vf = (v_linears / linear_rate + v_attention / rates["float"]) / 1e6  # GFLOP/s → ms
        pf = (p_linears / linear_rate + (p_attention + p_head) / rates["float"]) / 1e6
        res["vision_floor_ms"], res["prefill_floor_ms"] = _sig(vf), _sig(pf)
        res["floor_linears_gflops"] = round(linear_rate, 1)  # the rate the floors give the linears
        res["floor_fraction"] |= {  # None: the stage did not run (a reused frame has no vision encoder)
            "vision": _sig(vf / stages["vision"]["p50"]) if stages["vision"]["p50"] else None,
            "prefill": _sig(pf / stages["prefill"]["p50"]) if stages["prefill"]["p50"] else None,
        }
        if t.arch.text_hidden == PHI2_HIDDEN and t.arch.text_layers < PHI2_LAYERS:  # a phi2-Nl synthetic model
            f = t.arch.full_size_factors(positions)
            decode = stages["decode_per_token"]["p50"] * f["decode"]
            prefill = stages["prefill"]["p50"] * f["prefill"]
            one_word = stages["preprocess"]["p50"] + stages["vision"]["p50"] + prefill
            res["extrapolated_32_layers"] = {
                "note": f"EXTRAPOLATED from {t.arch.text_layers} measured decoder layers: decode × weight ratio "
                f"{f['decode']:.2f}, prefill × FLOP ratio {f['prefill']:.2f}; vision is the full encoder, measured",
                "decode_per_token_ms": round(decode, 2),
                "decode_tokens_per_s": round(1e3 / decode, 2),
                "prefill_ms": round(prefill, 1),
                "one_frame_one_word_answer_ms": round(one_word, 1),
                "decode_floor_ms": round(decode_floor * f["decode"], 3),
            }
    return res
