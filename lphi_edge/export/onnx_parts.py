"""torch → ONNX for the three parts, with torch.onnx.export(dynamo=True) and external data.

The decoder wrapper takes one named argument per past tensor (dynamic shapes do not bind to
varargs), rebuilds transformers' DynamicCache from them and returns the presents flat, so one graph
serves prefill (empty past) and decode. Example sizes are ≥ 2 so no axis is specialised.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
import torch
from torch import nn
from torch.export import Dim
from transformers import DynamicCache

from lphi_edge.errors import ConfigError
from lphi_edge.export.rewrites import fuse_kv_attention, simplify_attention
from lphi_edge.format.manifest import decoder_io_names
from lphi_edge.model.modeling import LlavaPhiForCausalLM
from lphi_edge.runtime.backend import IMAGE_ATTENTION

if TYPE_CHECKING:
    from lphi_edge.export.config import ExportConfig

logger = logging.getLogger(__name__)


class VisionEncoder(nn.Module):
    """pixel_values [B, 3, H, W] → (image_features [B, N, D], image_attention [B, N]) (CLIP tower + projector).

    image_attention is the [CLS] token's attention per image token in the features' layer (mean over heads),
    what visual-token reduction selects by (runtime/visual_tokens.py): every backend selects from the same
    scores. A tower that cannot give it (features taken from the embeddings) exports image_features only."""

    def __init__(self, model: LlavaPhiForCausalLM):
        super().__init__()
        self.model = model
        try:
            model.image_attention_layer()
            self.with_attention = True
        except ConfigError:
            self.with_attention = False

    @property
    def output_names(self) -> list[str]:
        return ["image_features", IMAGE_ATTENTION] if self.with_attention else ["image_features"]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.with_attention:
            return self.model.encode_images_with_attention(pixel_values)  # (B, N, D), (B, N)
        return self.model.encode_images(pixel_values)  # (B, N, D)


class EmbedTokens(nn.Module):
    """input_ids [B, S] → inputs_embeds [B, S, D]."""

    def __init__(self, model: LlavaPhiForCausalLM):
        super().__init__()
        self.embed = model.language_model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


def _python_name(onnx_name: str) -> str:
    return onnx_name.replace(".", "_")


class Decoder(nn.Module):
    """(inputs_embeds, attention_mask, position_ids, past_key_values_{i}_{key,value}...) →
    (logits [B, S, V], present_{i}_{key,value} [B, H, P + S, Dh]...)."""

    def __init__(self, model: LlavaPhiForCausalLM):
        super().__init__()
        self.model = model
        self.num_layers = model.config.text.num_hidden_layers
        inputs, _ = decoder_io_names(self.num_layers)
        self.arg_names = [_python_name(n) for n in inputs]
        p = inspect.Parameter
        # An explicit signature with one parameter per tensor, for torch.export's argument binding.
        self.forward.__func__.__signature__ = inspect.Signature(
            [p("self", p.POSITIONAL_OR_KEYWORD)] + [p(n, p.POSITIONAL_OR_KEYWORD) for n in self.arg_names]
        )

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bound = dict(zip(self.arg_names, args)) | kwargs
        past = [bound[n] for n in self.arg_names[3:]]  # (B, H, P, Dh) each
        cache = DynamicCache(
            [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)], config=self.model.config.text
        )
        out = self.model(
            inputs_embeds=bound["inputs_embeds"],
            attention_mask=bound["attention_mask"],
            position_ids=bound["position_ids"],
            cache=cache,
        )
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]  # (B, H, P + S, Dh)
        return (out.logits, *present)


def _export(
    module: nn.Module,
    kwargs: dict[str, torch.Tensor],
    dynamic_shapes: dict,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
    rewrite: Callable[[ir.Model], object] | None = None,
) -> None:
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter (axis renames, deprecations)
        program = torch.onnx.export(
            module,
            (),
            kwargs=kwargs,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            verbose=False,
        )
    simplify_attention(program.model)
    if rewrite is not None:
        rewrite(program.model)
    program.save(str(path), external_data=True)


def export_vision(model: LlavaPhiForCausalLM, path: Path, config: ExportConfig) -> None:
    size = model.config.vision.image_size
    pixels = torch.randn(2, 3, size, size)  # (B, 3, H, W)
    encoder = VisionEncoder(model).eval()
    _export(
        encoder,
        {"pixel_values": pixels},
        {"pixel_values": {0: Dim("batch")}},
        path,
        ["pixel_values"],
        encoder.output_names,
        config.opset,
    )


def export_embed(model: LlavaPhiForCausalLM, path: Path, config: ExportConfig) -> None:
    ids = torch.randint(0, model.config.text.vocab_size, (2, 3))  # (B, S)
    _export(
        EmbedTokens(model).eval(),
        {"input_ids": ids},
        {"input_ids": {0: Dim("batch"), 1: Dim("sequence")}},
        path,
        ["input_ids"],
        ["inputs_embeds"],
        config.opset,
    )


def rotary_tables(model: LlavaPhiForCausalLM) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (context length, rotary_dim / 2): the language model's own rotary embedding at every
    position, in the half-table layout onnxruntime's rotary kernels take (Phi rotates halves)."""
    rope = model.language_model.model.rotary_emb
    positions = torch.arange(model.config.text.max_position_embeddings)[None]  # (1, P)
    with torch.no_grad():
        cos, sin = rope(torch.zeros(1), positions)  # (1, P, rotary_dim) each: the frequencies twice over
    half = cos.shape[-1] // 2
    return cos[0, :, :half].numpy(), sin[0, :, :half].numpy()


def export_decoder(model: LlavaPhiForCausalLM, path: Path, config: ExportConfig) -> None:
    """config.kv_cache "concat": present = Concat(past, new), any runtime; "shared": GroupQueryAttention,
    whose past and present the onnxruntime backend binds to one preallocated buffer (`fuse_kv_attention`)."""
    t = model.config.text
    b, s, p = 2, 3, 4
    heads, head_dim = t.num_key_value_heads, model.config.head_dim
    dec = Decoder(model).eval()
    batch, seq, past, total = Dim("batch"), Dim("sequence"), Dim("past_sequence"), Dim("total_sequence")
    kwargs = {
        "inputs_embeds": torch.randn(b, s, t.hidden_size),  # (B, S, D)
        "attention_mask": torch.ones(b, p + s, dtype=torch.long),  # (B, P + S)
        "position_ids": torch.arange(p, p + s).expand(b, s).clone(),  # (B, S)
    }
    dynamic = {
        "inputs_embeds": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: seq},
    }
    for name in dec.arg_names[3:]:
        kwargs[name] = torch.randn(b, heads, p, head_dim)  # (B, H, P, Dh)
        dynamic[name] = {0: batch, 2: past}
    inputs, outputs = decoder_io_names(t.num_hidden_layers)
    rewrite = None
    if config.kv_cache == "shared":
        # the op rotates q and k itself (fewer ops per token: the graph's rotary subgraph is ~25 small ops per
        # layer; benchmarks/results/NOTES.md) where its kernel allows: head_dim and rotary_dim multiples of 16
        # (Phi-2: 80 and 32); elsewhere the graph keeps rotating them
        tables = rotary_tables(model)
        if head_dim % 16 or tables[0].shape[1] % 8:
            tables = None

        def rewrite(m: ir.Model) -> int:
            return fuse_kv_attention(
                m,
                num_heads=t.num_attention_heads,
                kv_num_heads=t.num_key_value_heads,
                head_dim=head_dim,
                rotary_cache=tables,
            )

    _export(dec, kwargs, dynamic, path, inputs, outputs, config.opset, rewrite)
