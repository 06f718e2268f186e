"""Graph rewrites applied to the exported ONNX parts before precision conversion.

1. `simplify_attention` (every part, always). The torch exporter lowers `scaled_dot_product_attention`
with the key transposed through a 3-D detour: Reshape(K, [-1, P, Dh]) → Transpose(perm=[0, 2, 1]) →
Reshape(back to [B, H, Dh, P]). No onnxruntime fusion sees through the reshapes, so every decode step
materialises Kᵀ of the whole cache: at Phi-2 width 7 MB per layer per token, a large share of an int4
decode step on a CPU (benchmarks/results/NOTES.md). The rewrite replaces the detour with the plain
Transpose(K, perm=[0, 1, 3, 2]) it stands for, which onnxruntime folds into its MatMul (FusedMatMul, transB)
and TensorRT handles natively. Same math; the export's verification gate checks the result against
PyTorch like any other export.

2. `fuse_kv_attention` (the decoder, `lphi-export --kv-cache shared`): attention with a KV cache written in
place, through onnxruntime's GroupQueryAttention (see its section below).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.rewriter import pattern

from lphi_edge.errors import LphiError

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


# ---- shared KV buffers: attention → onnxruntime GroupQueryAttention --------------------------------------------------
# The exported decoder's interface is `present = Concat(past, new)`: every decode step copies the whole cache
# (at Phi-2 width and 700 positions: 2 × 7 MB per layer, read and written — a large share of an int4 step
# on a CPU; benchmarks/results/NOTES.md).
# onnxruntime's GroupQueryAttention (com.microsoft) takes the new keys/values and the past, writes the
# present, and — when past and present are bound to the same buffer — writes only the S new positions into
# it. Its contract is the same as the Concat graph's (past [B, H, P, Dh] → present [B, H, P + S, Dh]) when the
# buffers are separate; the onnxruntime backend binds one preallocated buffer to both. Positions come from
# the attention mask's sum, so the mask must be all ones (no padding): the backend checks it.
GQA_DOMAIN = "com.microsoft"


class AttentionPatternError(LphiError):
    """The decoder's attention is not the exporter's scaled_dot_product_attention lowering this rewrite knows."""


def _producer(value: ir.Value, op_type: str) -> ir.Node:
    node = value.producer()
    if node is None or node.op_type != op_type:
        found = node.op_type if node is not None else "a graph input"
        raise AttentionPatternError(f"expected {op_type} to produce {value.name!r}, found {found}")
    return node


def _scalar(value: ir.Value) -> float:
    tensor = value.const_value
    if tensor is None and (node := value.producer()) is not None and node.op_type == "Constant":
        tensor = node.attributes["value"].value
    if tensor is None or tensor.numpy().size != 1:
        raise AttentionPatternError(f"the attention scale {value.name!r} is not a constant scalar")
    return float(tensor.numpy().reshape(()))


def _constant(value, dtype=np.int64) -> ir.Node:
    return ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(np.array(value, dtype=dtype)))])


def _sequence_lengths(mask: ir.Value) -> tuple[list[ir.Node], ir.Value, ir.Value]:
    """(nodes, seqlens_k i32 [B] = sum(mask) - 1, total_sequence_length i32 scalar = mask.shape[1])."""
    axes, one, scalar = _constant([1]), _constant(1), _constant([], np.int64)
    total_len = ir.Node("", "ReduceSum", [mask, axes.outputs[0]], [ir.AttrInt64("keepdims", 0)])  # (B,)
    last = ir.Node("", "Sub", [total_len.outputs[0], one.outputs[0]])  # (B,)
    seqlens = ir.Node("", "Cast", [last.outputs[0]], [ir.AttrInt64("to", ir.DataType.INT32)])
    width = ir.Node("", "Shape", [mask], [ir.AttrInt64("start", 1), ir.AttrInt64("end", 2)])  # (1,)
    width0 = ir.Node("", "Reshape", [width.outputs[0], scalar.outputs[0]])  # ()
    total = ir.Node("", "Cast", [width0.outputs[0]], [ir.AttrInt64("to", ir.DataType.INT32)])
    nodes = [axes, one, scalar, total_len, last, seqlens, width, width0, total]
    return nodes, seqlens.outputs[0], total.outputs[0]


def _heads_input(x: ir.Value, layer: int) -> ir.Value:
    """The (B, S, H·Dh) projection behind a rotated (B, H, S, Dh) tensor: the input of the one
    Reshape → Transpose(perm 0, 2, 1, 3) that every path of the rotary subgraph starts from."""
    seen, todo, found = set(), [x], set()
    while todo:
        v = todo.pop()
        node = v.producer()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        perm = node.attributes.get("perm")
        if node.op_type == "Transpose" and perm is not None and list(perm.value) == [0, 2, 1, 3]:
            found.add(_producer(node.inputs[0], "Reshape").inputs[0])
            continue
        todo.extend(i for i in node.inputs if i is not None and i.const_value is None)
    if len(found) != 1:
        raise AttentionPatternError(
            f"layer {layer}: expected one head split behind the rotary embedding, found {len(found)}"
        )
    return found.pop()


class _Emitter:
    """Collects the new nodes of one rewrite, in order."""

    def __init__(self) -> None:
        self.nodes: list[ir.Node] = []

    def __call__(self, node: ir.Node) -> ir.Value:
        self.nodes.append(node)
        return node.outputs[0]

    def to_bsd(self, x: ir.Value, flat: ir.Value) -> ir.Value:
        """(B, H, S, Dh) → (B, S, H·Dh), the layout GroupQueryAttention takes."""
        bshd = self(ir.Node("", "Transpose", [x], [ir.AttrInt64s("perm", [0, 2, 1, 3])]))
        return self(ir.Node("", "Reshape", [bshd, flat]))


def _fuse_layer(
    graph: ir.Graph,
    layer: int,
    past: tuple[ir.Value, ir.Value],
    lengths: tuple[ir.Value, ir.Value],
    heads: tuple,
    rotary: tuple[ir.Value, ir.Value] | None,
) -> None:
    past_k, past_v = past
    num_heads, kv_num_heads, head_dim = heads
    outputs = {v.name: k for k, v in enumerate(graph.outputs)}
    cat_k, cat_v = (next((u.node for u in p.uses() if u.node.op_type == "Concat"), None) for p in past)
    if cat_k is None or cat_v is None:
        raise AttentionPatternError(f"layer {layer}: the past keys/values are not concatenated with the new ones")
    present_k, present_v = cat_k.outputs[0], cat_v.outputs[0]
    pv = next((u.node for u in present_v.uses() if u.node.op_type == "MatMul" and u.idx == 1), None)
    if pv is None:
        raise AttentionPatternError(f"layer {layer}: no MatMul(probs, present values)")
    softmax = _producer(_producer(pv.inputs[0], "Where").inputs[2], "Softmax")
    scores = _producer(_producer(softmax.inputs[0], "Add").inputs[0], "MatMul")
    scaled_q, scaled_kt = _producer(scores.inputs[0], "Mul"), _producer(scores.inputs[1], "Mul")
    if _producer(scaled_kt.inputs[0], "Transpose").inputs[0] is not present_k:
        raise AttentionPatternError(f"layer {layer}: the scores do not read the present keys")
    scale = _scalar(scaled_q.inputs[1]) * _scalar(scaled_kt.inputs[1])

    emit = _Emitter()
    flat, split = emit(_constant([0, 0, -1])), emit(_constant([0, 0, num_heads, head_dim]))
    attrs = [
        ir.AttrInt64("num_heads", num_heads),
        ir.AttrInt64("kv_num_heads", kv_num_heads),
        ir.AttrFloat32("scale", scale),
    ]
    if rotary is None:  # q and k as the graph rotated them
        q, k, v = (emit.to_bsd(x, flat) for x in (scaled_q.inputs[0], cat_k.inputs[1], cat_v.inputs[1]))
        extra: list[ir.Value | None] = []
    else:  # the projections before the rotary subgraph; the op rotates them (positions from seqlens_k)
        q, k = _heads_input(scaled_q.inputs[0], layer), _heads_input(cat_k.inputs[1], layer)
        v = _heads_input(cat_v.inputs[1], layer)
        attrs += [ir.AttrInt64("do_rotary", 1), ir.AttrInt64("rotary_interleaved", 0)]
        extra = list(rotary)
    inputs = [q, k, v, past_k, past_v, *lengths, *extra]
    gqa = ir.Node(GQA_DOMAIN, "GroupQueryAttention", inputs, attrs, num_outputs=3)
    emit.nodes.append(gqa)
    out = emit(ir.Node("", "Reshape", [gqa.outputs[0], split]))  # (B, S, H, Dh)
    out = emit(ir.Node("", "Transpose", [out], [ir.AttrInt64s("perm", [0, 2, 1, 3])]))  # (B, H, S, Dh)
    graph.insert_before(pv, emit.nodes)
    ir.convenience.replace_all_uses_with(pv.outputs[0], out)
    for old, new in ((present_k, gqa.outputs[1]), (present_v, gqa.outputs[2])):
        name = old.name
        old.name, new.name = f"{name}.concat", name
        graph.outputs[outputs[name]] = new


def fuse_kv_attention(
    model: ir.Model,
    *,
    num_heads: int,
    kv_num_heads: int,
    head_dim: int,
    rotary_cache: tuple[np.ndarray, np.ndarray] | None = None,
) -> int:
    """Replace every decoder layer's Concat-cache attention with GroupQueryAttention; returns the layer count.

    Per layer i, the exporter's lowering (after `simplify_attention`) is
        present.i.key   = Concat(past_key_values.i.key, k, axis=-2)            k, v, q: (B, H, S, Dh), rotated
        present.i.value = Concat(past_key_values.i.value, v, axis=-2)
        probs = Where(IsNaN(p), 0, p), p = Softmax(MatMul(q · a, Transpose(present.i.key) · b) + mask_bias)
        out   = MatMul(probs, present.i.value)                                  (B, H, S, Dh)
    and becomes
        out', present.i.key, present.i.value = GroupQueryAttention(q', k', v', past.i.key, past.i.value,
                                                                  seqlens_k, total_sequence_length, scale=a·b)
    with q', k', v' the (B, S, H·Dh) layout the op takes and out = out' back in (B, H, S, Dh).

    rotary_cache: (cos, sin), each (max positions, rotary_dim / 2) — the model's own rotary tables. With them
    the op also applies the rotary embedding (rotate-half, the first rotary_dim dims of each head) and q', k'
    are the projections before the graph's rotary subgraph, which is removed; positions then come from
    seqlens_k (the cached length), so position_ids must count on from the cache (the backend checks).
    """
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs}
    if "attention_mask" not in inputs:
        raise AttentionPatternError("the decoder has no attention_mask input")
    length_nodes, seqlens, total = _sequence_lengths(inputs["attention_mask"])
    rotary = None
    if rotary_cache is not None:
        tables = [_constant(np.ascontiguousarray(t), np.float32) for t in rotary_cache]  # (positions, rot / 2)
        length_nodes += tables
        rotary = (tables[0].outputs[0], tables[1].outputs[0])
    graph.insert_before(next(iter(graph)), length_nodes)
    layer = 0
    while (past_k := inputs.get(f"past_key_values.{layer}.key")) is not None:
        past = (past_k, inputs[f"past_key_values.{layer}.value"])
        _fuse_layer(graph, layer, past, (seqlens, total), (num_heads, kv_num_heads, head_dim), rotary)
        layer += 1
    if layer == 0:
        raise AttentionPatternError("the decoder has no past_key_values inputs")
    model.opset_imports[GQA_DOMAIN] = 1
    RemoveUnusedNodesPass()(model)  # the Concats, the mask and the old attention
    logger.info("%s: %d attentions → GroupQueryAttention (shared KV buffers)", graph.name, layer)
    return layer
