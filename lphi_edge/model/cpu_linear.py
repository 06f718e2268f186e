"""The prompt's linears on the CPU with their rows padded to a multiple of 16 (bf16, and int8's products).

Why: for some row counts M — among them the vision tower's 577 positions and the prefill's 697 — oneDNN runs a
bf16 (M, K) × (K, N) product well below the rate it reaches a few rows away, and every multiple of 16 measured
ran at the full rate (benchmarks/results/NOTES.md, "Rows padded to 16"). Each output row depends only on its own
input row, so the first M rows of the product of the rows padded with zeros are the answer, and they are a
contiguous view of it: padding costs one copy of the input. Eager calls with few rows (a decode step's one
position) are left alone: their time is the weight read, not the arithmetic. Compiled graphs always pad (by 0..15
rows): a test of the row count would guard the graph on it and recompile it for other lengths.

Which linears: those every frame and prompt runs through — the vision encoder's layers, the projector and the
decoder layers (`prompt_linear_parents`); lm_head computes one position per token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ROW_MULTIPLE = 16  # every multiple of 16 measured ran at the full rate (module docstring)
MIN_ROWS = 64  # eager products with fewer rows are memory-bound: not padded


def pad_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., M, K) → (..., M + p, K) with p zero rows, M + p a multiple of ROW_MULTIPLE (module docstring: when)."""
    m = x.shape[-2]
    if not torch.compiler.is_compiling() and (m < MIN_ROWS or m % ROW_MULTIPLE == 0):
        return x
    return F.pad(x, (0, 0, 0, (-m) % ROW_MULTIPLE))


class RowPaddedLinear(nn.Linear):
    """nn.Linear whose product runs on rows padded by `pad_rows`; same parameters, same results."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> RowPaddedLinear:
        """Shares `linear`'s weight and bias (nothing is copied)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # (M, K)
        y = F.linear(pad_rows(rows), self.weight, self.bias)[: rows.shape[0]]  # (M, N)
        return y.reshape(*x.shape[:-1], self.out_features)  # (..., N)


def prompt_linear_parents(model: nn.Module) -> list[nn.Module]:
    """The submodules holding the linears a frame and a prompt run through (module docstring) of a
    LlavaPhiForCausalLM: the vision encoder's layers, the projector and the decoder layers."""
    return [model.vision_tower.encoder, model.mm_projector, model.language_model.model.layers]


def replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> int:
    """Replace every nn.Linear (exactly that type) under `prompt_linear_parents` with make(linear), in place;
    returns how many."""
    count = 0
    for parent in prompt_linear_parents(model):
        for module in list(parent.modules()):
            for name, child in list(module.named_children()):
                if type(child) is nn.Linear:
                    setattr(module, name, make(child))
                    count += 1
    return count


def pad_linear_rows(model: nn.Module) -> int:
    """Run the prompt's linears as RowPaddedLinear (the model on the CPU in bf16); returns how many."""
    return replace_linears(model, RowPaddedLinear.from_linear)
