"""Graph rewrites applied to the exported ONNX parts before precision conversion.

The torch exporter lowers `scaled_dot_product_attention` with the key transposed through a 3-D
detour: Reshape(K, [-1, P, Dh]) → Transpose(perm=[0, 2, 1]) → Reshape(back to [B, H, Dh, P]). No
onnxruntime fusion sees through the reshapes, so every decode step materialises Kᵀ of the whole
cache: at Phi-2 width that is 7 MB per layer per token, 19 % of an int4 decode step on 2 CPU cores.
The rewrite replaces the detour with the plain Transpose(K, perm=[0, 1, 3, 2]) it stands for, which
onnxruntime folds into its MatMul (FusedMatMul, transB) and TensorRT handles natively. Same math; the
export's verification gate checks the result against PyTorch like any other export.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnxscript.rewriter import pattern

logger = logging.getLogger(__name__)


def _key_transpose_detour(op, key, shape_3d, shape_4d):
    flat = op.Reshape(key, shape_3d, _allow_other_attributes=True)  # (B·H, P, Dh)
    return op.Reshape(op.Transpose(flat, perm=[0, 2, 1]), shape_4d, _allow_other_attributes=True)  # (B, H, Dh, P)


def _key_transpose(op, key, **_):
    return op.Transpose(key, perm=[0, 1, 3, 2])  # (B, H, P, Dh) → (B, H, Dh, P)


def _is_4d(context, key, **_) -> bool:
    return key.shape is not None and len(key.shape) == 4


KEY_TRANSPOSE_RULE = pattern.RewriteRule(_key_transpose_detour, _key_transpose, _is_4d)


def simplify_attention(model: ir.Model) -> int:
    """Rewrite an exported model in memory (before it is saved); returns how many attention blocks changed."""
    n = KEY_TRANSPOSE_RULE.apply_to_model(model)
    if n:
        logger.info("%s: %d attention key transposes simplified", model.graph.name, n)
    return n
