"""The training loop of every stage: freezing, data order, accumulation, checkpoints and resume.

Resumable checkpoints (every `save_every` optimizer steps, written atomically by rank 0) hold the trainable
weights (frozen ones are those of the starting checkpoint), the optimizer and scheduler states, every
rank's RNG state and the data position, all as safetensors + JSON (no pickle), keyed by parameter name and
unsharded: independent of the number of processes. Rerunning the same command continues from the newest.

Under torchrun the model is sharded with FSDP2 (lphi_edge.train.distributed); each optimizer step takes
the same `global_batch` samples in the same order whatever the number of processes (each global
micro-batch of micro_batch × processes samples is split by rank), and the loss is normalised by the
step's total label tokens over all ranks, so 1 and N processes compute the same update.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lphi_edge.atomic import atomic_directory
from lphi_edge.errors import ConfigError
from lphi_edge.model.checkpoint import load_checkpoint, processor_config, save_checkpoint
from lphi_edge.model.modeling import LlavaPhiForCausalLM
from lphi_edge.processing.image import ImageProcessor
from lphi_edge.processing.template import get_template
from lphi_edge.processing.tokenizer import Tokenizer
from lphi_edge.train.config import TrainConfig
from lphi_edge.train.data import BadSampleError, LlavaJsonDataset, Sample, collate
from lphi_edge.train.distributed import (
    DistContext,
    full_state_dicts,
    init_distributed,
    load_full_state_dicts,
    shard_model,
    shutdown,
)

logger = logging.getLogger(__name__)


def set_trainable(model: LlavaPhiForCausalLM, config: TrainConfig) -> list[str]:
    """Freeze per stage; returns the trainable top-level parts."""
    parts = {"pretrain": ["mm_projector"], "finetune": ["mm_projector", "language_model"], "sft": ["language_model"]}
    trainable = parts[config.stage] + (
        ["vision_tower"] if config.unfreeze_vision and config.stage == "finetune" else []
    )
    model.requires_grad_(False)
    for name in trainable:
        getattr(model, name).requires_grad_(True)
    return trainable


def add_lora(model: LlavaPhiForCausalLM, config: TrainConfig) -> None:
    """Wrap the LM with peft LoRA adapters (its base weights frozen; other trainable parts unchanged)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("lora=true needs peft: pip install 'lphi-edge[train]'") from None
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets),
        bias="none",
    )
    model.language_model = get_peft_model(model.language_model, lora)
    n = sum(p.numel() for p in model.language_model.parameters() if p.requires_grad)
    logger.info("LoRA r=%d on %s: %d trainable LM parameters", config.lora_r, config.lora_targets, n)


def quantize_lm_4bit(model: LlavaPhiForCausalLM, config: TrainConfig, device: torch.device) -> int:
    """QLoRA base: the LM's targeted linear layers → bitsandbytes NF4 `Linear4bit` (frozen, bf16 compute),
    quantized when moved to the GPU. Returns how many layers were replaced."""
    if device.type != "cuda":
        raise ConfigError("qlora needs a CUDA device (bitsandbytes 4-bit kernels); this run is on the CPU")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError("qlora needs bitsandbytes: pip install bitsandbytes") from None
    replaced = 0
    for parent in list(model.language_model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or name not in config.lora_targets:
                continue
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=torch.bfloat16,
                quant_type="nf4",
            )
            q.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data.clone(), requires_grad=False)
            setattr(parent, name, q.to(device))
            replaced += 1
    logger.info("QLoRA: %d LM linear layers quantized to NF4", replaced)
    return replaced


class Batches:
    """A seeded order per epoch (optionally length-grouped), resumable at any micro-batch; bad samples raise
    or are skipped. Global micro-batches of micro_batch × world samples are split by rank."""

    GROUP = 50  # global micro-batches per length-sorted group

    def __init__(
        self,
        dataset: LlavaJsonDataset,
        config: TrainConfig,
        pad_id: int,
        image_tokens: int,
        ctx: DistContext | None = None,
    ):
        self.dataset, self.config, self.pad_id, self.image_tokens = dataset, config, pad_id, image_tokens
        self.ctx = ctx or DistContext()
        self.skipped: list[str] = []
        self._lengths = dataset.approx_lengths() if config.group_by_length else None

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        if self._lengths is None:
            return order
        group = self.GROUP * self.config.micro_batch * self.ctx.world_size
        lengths = self._lengths
        return [i for k in range(0, len(order), group) for i in sorted(order[k : k + group], key=lambda j: -lengths[j])]

    def iterate(self, epoch: int, start: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(next position, this rank's batch) for the global micro-batches of `epoch` from position `start`."""
        order, mb, world = self.epoch_order(epoch), self.config.micro_batch, self.ctx.world_size
        for pos in range(start, len(order) - mb * world + 1, mb * world):
            samples: list[Sample] = []
            mine = order[pos + self.ctx.rank * mb : pos + (self.ctx.rank + 1) * mb]
            for i in mine:
                try:
                    samples.append(self.dataset[i])
                except BadSampleError as e:
                    if self.config.on_bad_sample == "error":
                        raise
                    self.skipped.append(str(e))
                    logger.warning("skipping bad sample: %s", e)
            if samples:
                yield pos + mb * world, collate(samples, self.image_tokens, self.pad_id)
            elif world > 1:  # the other ranks are waiting in a collective for this one
                raise BadSampleError(
                    f"rank {self.ctx.rank}: every sample of its micro-batch is bad "
                    f"({'; '.join(self.skipped[-mb:])}); a distributed step cannot skip a whole micro-batch"
                )


def train(config: TrainConfig) -> Path:
    """Run one stage to completion (resuming if checkpoints exist); returns the output checkpoint dir.
    Under torchrun every rank calls it; rank 0 writes checkpoints, metrics and the final model."""
    if config.threads:
        torch.set_num_threads(config.threads)
    ctx = init_distributed(config.device)
    per_step = config.micro_batch * ctx.world_size
    if config.global_batch % per_step:
        raise ConfigError(
            f"TrainConfig.global_batch ({config.global_batch}) must be a multiple of micro_batch × processes "
            f"({config.micro_batch} × {ctx.world_size})"
        )
    if config.qlora and ctx.distributed:
        raise ConfigError("qlora runs in one process (bitsandbytes 4-bit weights are not sharded by FSDP here)")
    out = Path(config.out)
    ckpt_dir = out / "checkpoints"
    torch.manual_seed(config.seed)  # before anything random (LoRA init, dropout); a resume restores its own state
    random.seed(config.seed)
    np.random.seed(config.seed)
    tokenizer = Tokenizer.from_dir(config.model)
    model = build_trainable(config)
    if config.qlora:
        quantize_lm_4bit(model, config, ctx.device)
    model.to(ctx.device)
    proc_cfg = processor_config(config.model, model.config)
    dataset = LlavaJsonDataset(
        config.data,
        config.image_folder,
        tokenizer,
        get_template(config.template),
        ImageProcessor(proc_cfg),
        config.max_length,
        model.config.image_tokens,
    )
    if len(dataset) < per_step:
        raise ConfigError(
            f"{config.data} has {len(dataset)} records, fewer than one micro-batch per process ({per_step})"
        )
    if config.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable()
    if ctx.distributed:
        shard_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
    )
    accum = config.global_batch // per_step
    steps_per_epoch = max(1, len(dataset) // config.global_batch)
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    make = get_cosine_schedule_with_warmup if config.schedule == "cosine" else get_linear_schedule_with_warmup
    scheduler = make(optimizer, int(config.warmup_ratio * total), total)
    state = {"step": 0, "epoch": 0, "position": 0}
    _resume(ckpt_dir, model, optimizer, scheduler, state, ctx)  # restores the RNG states too
    logger.info(
        "stage %s: training %s, %d steps of %d samples (%d × %d processes × %d accumulated), %d records, %s",
        config.stage,
        [n for n in ("vision_tower", "mm_projector", "language_model") if _trains(getattr(model, n))],
        total,
        config.global_batch,
        config.micro_batch,
        ctx.world_size,
        accum,
        len(dataset),
        ctx.device,
    )
    batches = Batches(dataset, config, tokenizer.eos_token_id, model.config.image_tokens, ctx)
    metrics = _open_metrics(out, state["step"]) if ctx.is_main else None
    model.train()
    bar = tqdm(
        total=total, initial=state["step"], desc=f"lphi-train {config.stage}", unit="step", disable=not ctx.is_main
    )
    stream = _micro_batches(batches, state)
    t_last, tokens, samples, losses = time.perf_counter(), 0, 0, []
    while state["step"] < total:
        optimizer.zero_grad(set_to_none=True)
        micro = [next(stream) for _ in range(accum)]
        n_tok = ctx.sum(sum(int((b["labels"] != -100).sum()) for _, b in micro))  # the step's label tokens, all ranks
        step_loss = 0.0
        for _, batch in micro:
            batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=config.bf16):
                logits = model(
                    None,
                    batch["attention_mask"],
                    input_ids=batch["input_ids"],
                    image_mask=batch["image_mask"],
                    pixel_values=batch.get("pixel_values"),
                ).logits  # (B, T, V)
            # token-weighted mean over the whole global batch (same loss whatever the split)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                batch["labels"][:, 1:].flatten(),
                ignore_index=-100,
                reduction="sum",
            ) / max(n_tok, 1)
            (loss * ctx.world_size).backward()  # FSDP averages gradients over ranks; undo that to get the sum
            step_loss += float(loss.detach())
            tokens += int(batch["attention_mask"].sum())
            samples += batch["input_ids"].shape[0]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        state["epoch"], state["position"] = micro[-1][0]
        losses.append(ctx.sum(step_loss))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if state["step"] % config.log_every == 0 or state["step"] == total:
            now = time.perf_counter()
            rec = {
                "step": state["step"],
                "epoch": state["epoch"],
                "loss": float(np.mean(losses)),
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": ctx.sum(tokens) / (now - t_last),
                "samples_per_s": ctx.sum(samples) / (now - t_last),
                "skipped": int(ctx.sum(len(batches.skipped))),
            }
            if metrics is not None:
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
            t_last, tokens, samples, losses = now, 0, 0, []
        if state["step"] == total or (config.save_every and state["step"] % config.save_every == 0):
            _save_state(ckpt_dir, model, optimizer, scheduler, state, ctx)
    bar.close()
    trained, _ = full_state_dicts(model)  # every rank takes part in the gather
    skipped = ctx.gather(batches.skipped)
    final = out / "model"
    if ctx.is_main:
        metrics.close()
        plain = export_copy(config, trained)
        final = save_checkpoint(plain, final, tokenizer_dir=config.model, processor=proc_cfg, overwrite=True)
        (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
        bad = [b for rank in skipped for b in rank]
        if bad:
            (out / "skipped_samples.txt").write_text("\n".join(bad) + "\n")
            logger.warning("skipped %d bad sample(s); listed in %s", len(bad), out / "skipped_samples.txt")
        plot_losses(out / "metrics.jsonl", out / "loss.png")
    shutdown()
    return final


def build_trainable(config: TrainConfig) -> LlavaPhiForCausalLM:
    """The starting checkpoint with this stage's parts trainable (and LoRA adapters if asked)."""
    model = load_checkpoint(config.model)
    set_trainable(model, config)
    if config.lora:
        add_lora(model, config)
    return model


def export_copy(config: TrainConfig, trained: dict[str, torch.Tensor]) -> LlavaPhiForCausalLM:
    """A plain full-precision model for the output checkpoint: the starting checkpoint with every trainable
    tensor taken from `trained`, LoRA adapters merged (for QLoRA into the original, unquantized weights)."""
    model = build_trainable(config)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n in names if n not in trained]
    if missing:
        raise RuntimeError(f"trained state lacks {len(missing)} trainable tensor(s), e.g. {missing[:3]}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n in names:
            params[n].copy_(trained[n].to(params[n].dtype))
    model.eval()
    if config.lora:
        model.language_model = model.language_model.merge_and_unload()
    return model


def _trains(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _open_metrics(out: Path, step: int):
    """metrics.jsonl for appending, records past the resumed step dropped (they are recomputed)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.jsonl"
    if path.is_file():
        kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in kept))
    return open(path, "a")


def _micro_batches(batches: Batches, state: dict) -> Iterator[tuple[tuple[int, int], dict[str, torch.Tensor]]]:
    """Endless micro-batches across epochs from the saved (epoch, position): ((epoch, next position), batch)."""
    epoch, start = state["epoch"], state["position"]
    while True:
        produced = False
        for pos, batch in batches.iterate(epoch, start):
            produced = True
            yield (epoch, pos), batch
        if not produced and start == 0:
            raise BadSampleError(
                f"{batches.dataset.path}: no usable micro-batch in a whole epoch "
                f"({len(batches.skipped)} bad sample(s) skipped)"
            )
        epoch, start = epoch + 1, 0


def _save_state(ckpt_dir: Path, model, optimizer, scheduler, state: dict, ctx: DistContext) -> None:
    """Trainable weights + optimizer tensors (safetensors) + everything else (JSON), unsharded, atomically.
    Every rank takes part (gathers); rank 0 writes."""
    model_sd, opt_sd = full_state_dicts(model, optimizer)
    rng = ctx.gather(
        {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if ctx.device.type == "cuda" else None,
            "python": repr(random.getstate()),
            "numpy": _numpy_state(),
        }
    )
    if ctx.is_main:
        with atomic_directory(ckpt_dir / f"step-{state['step']:08d}") as tmp:
            save_file({k: v.contiguous() for k, v in model_sd.items()}, str(tmp / "model.safetensors"))
            tensors, meta = {}, {"param_groups": opt_sd["param_groups"], "state": {}}
            for name, st in opt_sd["state"].items():
                meta["state"][name] = {}
                for key, value in st.items():
                    if torch.is_tensor(value):
                        tensors[f"{name}::{key}"] = value.contiguous()
                    else:
                        meta["state"][name][key] = value
            for r, rs in enumerate(rng):
                tensors[f"rng.torch.{r}"] = rs["torch"]
                if rs["cuda"] is not None:
                    tensors[f"rng.cuda.{r}"] = rs["cuda"]
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            meta.update(
                trainer=state,
                world_size=ctx.world_size,
                scheduler=scheduler.state_dict(),
                rng=[{"python": rs["python"], "numpy": rs["numpy"]} for rs in rng],
            )
            (tmp / "trainer_state.json").write_text(json.dumps(meta))
        for old in sorted(ckpt_dir.glob("step-*"))[:-2]:  # keep the newest two
            shutil.rmtree(old, ignore_errors=True)
    ctx.barrier()


def _numpy_state() -> list:
    st = np.random.get_state()
    return [st[0], st[1].tolist(), *st[2:]]


def _resume(ckpt_dir: Path, model, optimizer, scheduler, state: dict, ctx: DistContext) -> bool:
    """Every rank reads the newest checkpoint and keeps its shard. RNG states are restored per rank when
    the number of processes is unchanged (otherwise reseeded from the step: data order does not depend on it)."""
    done = sorted(ckpt_dir.glob("step-*")) if ckpt_dir.is_dir() else []
    if not done:
        return False
    last = done[-1]
    logger.info("resuming from %s", last)
    meta = json.loads((last / "trainer_state.json").read_text())
    if "world_size" not in meta:
        raise ConfigError(f"{last} was written by an older lphi-train; remove {ckpt_dir} to start over")
    tensors = load_file(str(last / "optimizer.safetensors"))
    opt_state: dict[str, dict] = {name: dict(st) for name, st in meta["state"].items()}
    for key, value in tensors.items():
        if not key.startswith("rng."):
            name, field = key.rsplit("::", 1)
            opt_state.setdefault(name, {})[field] = value
    model_sd = load_file(str(last / "model.safetensors"))  # trainable tensors; frozen ones are already loaded
    load_full_state_dicts(model, optimizer, model_sd, {"state": opt_state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    state.update(meta["trainer"])
    if meta["world_size"] == ctx.world_size:
        torch.set_rng_state(tensors[f"rng.torch.{ctx.rank}"])
        if ctx.device.type == "cuda" and f"rng.cuda.{ctx.rank}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{ctx.rank}"])
        rs = meta["rng"][ctx.rank]
        random.setstate(ast.literal_eval(rs["python"]))
        np.random.set_state((rs["numpy"][0], np.array(rs["numpy"][1], dtype=np.uint32), *rs["numpy"][2:]))
    else:
        logger.warning(
            "checkpoint written by %d process(es), resuming with %d: RNG streams reseeded (data order is unchanged)",
            meta["world_size"],
            ctx.world_size,
        )
        seed = state["step"] * 1000 + ctx.rank
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
    return True


def plot_losses(metrics: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not recs:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(png.parent.name)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
