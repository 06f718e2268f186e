"""The training loop of every stage: freezing, data order, accumulation, checkpoints and resume.

Resumable checkpoints (every `save_every` optimizer steps, written atomically) hold the model weights,
the optimizer and scheduler states, the RNG states and the data position, all as safetensors + JSON
(no pickle). Rerunning the same command continues from the newest one.
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


class Batches:
    """A seeded permutation per epoch, resumable at any micro-batch; bad samples raise or are skipped."""

    def __init__(self, dataset: LlavaJsonDataset, config: TrainConfig, pad_id: int, image_tokens: int):
        self.dataset, self.config, self.pad_id, self.image_tokens = dataset, config, pad_id, image_tokens
        self.skipped: list[str] = []

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        return torch.randperm(len(self.dataset), generator=g).tolist()

    def iterate(self, epoch: int, start: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(next position, batch) for micro-batches of `epoch` from sample position `start`."""
        order, mb = self.epoch_order(epoch), self.config.micro_batch
        for pos in range(start, len(order) - mb + 1, mb):
            samples: list[Sample] = []
            for i in order[pos : pos + mb]:
                try:
                    samples.append(self.dataset[i])
                except BadSampleError as e:
                    if self.config.on_bad_sample == "error":
                        raise
                    self.skipped.append(str(e))
                    logger.warning("skipping bad sample: %s", e)
            if samples:
                yield pos + mb, collate(samples, self.image_tokens, self.pad_id)


def train(config: TrainConfig) -> Path:
    """Run one stage to completion (resuming if checkpoints exist); returns the output checkpoint dir."""
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    ckpt_dir = out / "checkpoints"
    torch.manual_seed(config.seed)  # before anything random (LoRA init, dropout); a resume restores its own state
    random.seed(config.seed)
    np.random.seed(config.seed)
    model = load_checkpoint(config.model)
    tokenizer = Tokenizer.from_dir(config.model)
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
    if len(dataset) < config.micro_batch:
        raise ConfigError(f"{config.data} has {len(dataset)} records, fewer than micro_batch {config.micro_batch}")
    trainable = set_trainable(model, config)
    if config.lora:
        add_lora(model, config)
    if config.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
    )
    accum = config.global_batch // config.micro_batch
    steps_per_epoch = max(1, len(dataset) // config.global_batch)
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    make = get_cosine_schedule_with_warmup if config.schedule == "cosine" else get_linear_schedule_with_warmup
    scheduler = make(optimizer, int(config.warmup_ratio * total), total)
    state = {"step": 0, "epoch": 0, "position": 0}
    _resume(ckpt_dir, model, optimizer, scheduler, state)  # restores the RNG states too
    logger.info(
        "stage %s: training %s, %d steps of %d samples (%d × %d accumulated), %d records",
        config.stage,
        trainable,
        total,
        config.global_batch,
        config.micro_batch,
        accum,
        len(dataset),
    )
    batches = Batches(dataset, config, tokenizer.eos_token_id, model.config.image_tokens)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    if metrics_path.is_file():  # drop records past the resumed step (they are recomputed)
        kept = [
            ln for ln in metrics_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= state["step"]
        ]
        metrics_path.write_text("".join(ln + "\n" for ln in kept))
    metrics = open(metrics_path, "a")
    model.train()
    bar = tqdm(total=total, initial=state["step"], desc=f"lphi-train {config.stage}", unit="step")
    stream = _micro_batches(batches, state)
    t_last, tokens, samples, losses = time.perf_counter(), 0, 0, []
    while state["step"] < total:
        optimizer.zero_grad(set_to_none=True)
        micro = [next(stream) for _ in range(accum)]
        n_tok = sum(int((b["labels"] != -100).sum()) for _, b in micro)
        step_loss = 0.0
        for _, batch in micro:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                embeds = model.embed_multimodal(batch["input_ids"], batch["image_mask"], batch.get("pixel_values"))
                logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits  # (B, T, V)
            # token-weighted mean over the whole accumulated batch (same loss whatever the split)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                batch["labels"][:, 1:].flatten(),
                ignore_index=-100,
                reduction="sum",
            ) / max(n_tok, 1)
            loss.backward()
            step_loss += float(loss.detach())
            tokens += int(batch["attention_mask"].sum())
            samples += batch["input_ids"].shape[0]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        state["epoch"], state["position"] = micro[-1][0]
        losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if state["step"] % config.log_every == 0 or state["step"] == total:
            now = time.perf_counter()
            rec = {
                "step": state["step"],
                "epoch": state["epoch"],
                "loss": float(np.mean(losses)),
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": tokens / (now - t_last),
                "samples_per_s": samples / (now - t_last),
                "skipped": len(batches.skipped),
            }
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            t_last, tokens, samples, losses = now, 0, 0, []
        if config.save_every and state["step"] % config.save_every == 0 and state["step"] < total:
            _save_state(ckpt_dir, model, optimizer, scheduler, state)
    bar.close()
    metrics.close()
    model.eval()
    if config.lora:  # fold the adapters into the weights: a plain native checkpoint
        model.language_model = model.language_model.merge_and_unload()
    final = save_checkpoint(model, out / "model", tokenizer_dir=config.model, processor=proc_cfg, overwrite=True)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
    if batches.skipped:
        (out / "skipped_samples.txt").write_text("\n".join(batches.skipped) + "\n")
        logger.warning("skipped %d bad sample(s); listed in %s", len(batches.skipped), out / "skipped_samples.txt")
    plot_losses(out / "metrics.jsonl", out / "loss.png")
    return final


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


def _save_state(ckpt_dir: Path, model, optimizer, scheduler, state: dict) -> None:
    """model weights + optimizer tensors (safetensors) + everything else (JSON), atomically."""
    with atomic_directory(ckpt_dir / f"step-{state['step']:08d}") as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        opt = optimizer.state_dict()
        tensors, meta = {}, {"param_groups": opt["param_groups"], "state": {}}
        for pid, st in opt["state"].items():
            meta["state"][str(pid)] = {}
            for key, value in st.items():
                if torch.is_tensor(value):
                    tensors[f"{pid}.{key}"] = value.contiguous()
                else:
                    meta["state"][str(pid)][key] = value
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        np_state = np.random.get_state()
        meta.update(
            state=meta["state"],
            trainer=state,
            scheduler=scheduler.state_dict(),
            rng={"python": repr(random.getstate()), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]},
        )
        (tmp / "trainer_state.json").write_text(json.dumps(meta))
    for old in sorted(ckpt_dir.glob("step-*"))[:-2]:  # keep the newest two
        shutil.rmtree(old, ignore_errors=True)


def _resume(ckpt_dir: Path, model, optimizer, scheduler, state: dict) -> bool:
    done = sorted(ckpt_dir.glob("step-*")) if ckpt_dir.is_dir() else []
    if not done:
        return False
    last = done[-1]
    logger.info("resuming from %s", last)
    model.load_state_dict(load_file(str(last / "model.safetensors")))
    meta = json.loads((last / "trainer_state.json").read_text())
    tensors = load_file(str(last / "optimizer.safetensors"))
    opt_state = {}
    for pid, st in meta["state"].items():
        opt_state[int(pid)] = dict(st)
    for key, value in tensors.items():
        if key.startswith("rng."):
            continue
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    state.update(meta["trainer"])
    torch.set_rng_state(tensors["rng.torch"])
    random.setstate(ast.literal_eval(meta["rng"]["python"]))
    np_state = meta["rng"]["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
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
