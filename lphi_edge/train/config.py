"""Typed training configuration: YAML file + `--set key=value` overrides, validated on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lphi_edge.errors import ConfigError

STAGES = ("pretrain", "finetune", "sft")


@dataclass(frozen=True)
class TrainConfig:
    """One training stage.

    Attributes:
        stage: pretrain (projector only, "plain" data) | finetune (projector + LM, phi_v0 conversations) |
            sft (text-only LM SFT on ShareGPT/Vicuna-style conversations).
        model: checkpoint directory to start from (native layout).
        data: LLaVA JSON file.
        image_folder: where record["image"] paths are resolved (default: beside the JSON).
        out: output directory: final native checkpoint, checkpoints/, metrics.jsonl, loss.png.
        lr / weight_decay / betas / eps: AdamW (paper: β=(0.9, 0.98), ε=1e-7, wd 0.1).
        schedule: cosine | linear decay after `warmup_ratio` of the steps.
        global_batch / micro_batch: samples per optimizer step / per forward; accumulation fills the gap.
        epochs / max_steps: length (max_steps > 0 overrides epochs).
        max_length: positions per sample (text + image tokens); longer samples are bad samples.
        bf16: autocast bf16 compute. gradient_checkpointing: recompute activations in backward.
        unfreeze_vision: finetune the vision tower too (stage 2 option).
        save_every: optimizer steps between resumable checkpoints (0: only at the end; the end always gets one).
        on_bad_sample: error (stop naming the record) | skip (count and report).
        seed / log_every / threads: reproducibility, logging period, torch CPU threads (0: default).
        device: auto (CUDA when torch sees it) | cpu | cuda. Under torchrun every process takes the GPU of
            its LOCAL_RANK and the model is sharded with FSDP2; global_batch is then split as
            micro_batch × processes × accumulation steps.
        group_by_length: draw micro-batches of similar length (less padding): each epoch's shuffled order
            is cut into groups of 50 global micro-batches, each sorted by length.
        lora: train LoRA adapters on the LM's linear layers instead of its weights (finetune / sft); the
            adapters are merged back, so the output is a plain native checkpoint.
        lora_r / lora_alpha / lora_dropout / lora_targets: the adapters' rank, scale, dropout and modules.
        qlora: LoRA over the LM's linear layers quantized to 4-bit NF4 by bitsandbytes (needs lora, CUDA,
            bitsandbytes and one process); the adapters are merged into the original full-precision weights.
    """

    stage: str
    model: str
    data: str
    out: str
    image_folder: str | None = None
    lr: float = 2e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-7
    schedule: str = "cosine"
    warmup_ratio: float = 0.03
    global_batch: int = 256
    micro_batch: int = 4
    epochs: float = 1.0
    max_steps: int = 0
    max_length: int = 2048
    bf16: bool = False
    gradient_checkpointing: bool = False
    unfreeze_vision: bool = False
    save_every: int = 500
    on_bad_sample: str = "error"
    seed: int = 0
    log_every: int = 10
    threads: int = 0
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")
    qlora: bool = False
    device: str = "auto"
    group_by_length: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ConfigError(f"TrainConfig.{f.name} must be true or false, got {value!r}")
            if f.type in ("float", "int") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"TrainConfig.{f.name} must be a number, got {value!r}")
        if self.stage not in STAGES:
            raise ConfigError(f"TrainConfig.stage must be one of {STAGES}, got {self.stage!r}")
        for name in ("lr", "eps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.weight_decay < 1:
            raise ConfigError(f"TrainConfig.weight_decay must be in [0, 1), got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"TrainConfig.betas must be two values in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.schedule not in ("cosine", "linear"):
            raise ConfigError(f"TrainConfig.schedule must be cosine or linear, got {self.schedule!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        for name in ("global_batch", "micro_batch", "max_length", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be an integer ≥ 1, got {getattr(self, name)!r}")
        if self.global_batch % self.micro_batch:
            raise ConfigError(
                f"TrainConfig.global_batch ({self.global_batch}) must be a multiple of micro_batch ({self.micro_batch})"
            )
        if self.max_steps < 0 or self.save_every < 0 or self.threads < 0:
            raise ConfigError("TrainConfig.max_steps, save_every and threads must be ≥ 0")
        if self.max_steps == 0 and not self.epochs > 0:
            raise ConfigError(f"TrainConfig.epochs must be > 0 (or set max_steps), got {self.epochs!r}")
        if self.lora and self.stage == "pretrain":
            raise ConfigError("TrainConfig.lora applies to finetune and sft (stage 1 trains only the projector)")
        if self.lora and (self.lora_r < 1 or self.lora_alpha < 1 or not 0 <= self.lora_dropout < 1):
            raise ConfigError(
                f"TrainConfig.lora_r / lora_alpha must be ≥ 1 and lora_dropout in [0, 1), got "
                f"{self.lora_r}, {self.lora_alpha}, {self.lora_dropout}"
            )
        if self.qlora and not self.lora:
            raise ConfigError("TrainConfig.qlora trains LoRA adapters over a 4-bit LM: it needs lora=true")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"TrainConfig.device must be auto, cpu or cuda, got {self.device!r}")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.on_bad_sample not in ("error", "skip"):
            raise ConfigError(f"TrainConfig.on_bad_sample must be error or skip, got {self.on_bad_sample!r}")

    @property
    def template(self) -> str:
        return "plain" if self.stage == "pretrain" else "phi_v0"

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None, **fields: Any) -> TrainConfig:
        """YAML file (if any), then keyword fields, then `key=value` overrides (values parsed as YAML)."""
        import yaml

        data: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text())
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"cannot read training config {path}: {e}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected a mapping of TrainConfig fields")
            data.update(loaded)
        data.update({k: v for k, v in fields.items() if v is not None})
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r} must be key=value")
            data[key.strip()] = yaml.safe_load(value)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s) {unknown}: expected some of {sorted(known)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in data]
        if missing:
            raise ConfigError(f"TrainConfig is missing required field(s) {missing}")
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        for f in dataclasses.fields(cls):  # YAML 1.1 reads 6e-4 (no dot) as a string; it means the number
            if f.type == "float" and isinstance(data.get(f.name), str):
                data[f.name] = _float_or_str(data[f.name])
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"invalid TrainConfig: {e}") from None


def _float_or_str(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # validation names the field and the value
