"""The PyTorch reference backend: the checkpoint itself, fp32 / fp16 / bf16, CPU or CUDA; int8 on the CPU.

`dtype="int8"` (CPU only) runs the linears as int8 matmuls (weights per channel, activations per token, rounded at
run time; model/int8.py) and everything else in bf16: the CPU's int8 dot products (VNNI / AMX) do the vision
encoder's and the prefill's matmuls at several times the bf16 rate, at an accuracy cost measured in
benchmarks/README.md §10. In bf16 (and int8) on the CPU the vision tower's attention is model/cpu_attention.py's
(the backend sets it on the model's config), not SDPA, and the prompt's linears run on rows padded to a multiple
of 16 (model/cpu_linear.py: oneDNN runs some row counts, 577 and 697 among them, well below its rate).

On CUDA, decode steps replay a captured CUDA graph: eager decode of a 32-layer model is bound by
kernel launches, not by reading the weights (measured in benchmarks/README.md), and a graph launches the
whole step at once. The graph needs fixed addresses, so that path keeps the KV
cache in transformers' StaticCache (preallocated to the context length, one per backend, reused across
conversations) and feeds a prepared 4-D additive mask; prefill stays eager. `static_cache=True`
without graphs runs the same cache path anywhere (the CPU tests check it against the dynamic cache).

`torch_compile=True` runs the vision encoder (one graph that also gives the [CLS] attention visual-token reduction
selects by) and the prefill as torch.compile (inductor) graphs with `freezing`: the
weights become constants, the linears are prepacked for oneDNN and their epilogues fused (what that buys on the
CPU in bf16, and what it costs in memory: benchmarks/README.md §10). The vision encoder compiles when the backend is
built and the prefill at load through Assistant's throwaway chat (tens of seconds; its length is symbolic), so no
answer pays for a compile; token steps stay eager (one position: little to fuse, and CUDA graphs own that path on
a GPU).

`device="cuda:N"` puts the model on GPU N (the graph is captured there too); `threads=N` is
torch.set_num_threads(N), which is process-wide: every torch model in the process runs with N threads.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch
from transformers import DynamicCache, StaticCache

from lphi_edge.errors import ConfigError
from lphi_edge.model.checkpoint import DTYPE_NAMES, load_checkpoint
from lphi_edge.model.cpu_attention import use_cpu_vision_attention
from lphi_edge.model.cpu_linear import pad_linear_rows
from lphi_edge.model.int8 import is_int8, quantize_linears
from lphi_edge.model.modeling import LlavaPhiForCausalLM
from lphi_edge.runtime.backend import TORCH_DTYPES, ModelSpec, check_cache_arrays
from lphi_edge.runtime.device import check_threads, parse_device
from lphi_edge.runtime.host_memory import keep_freed_memory

logger = logging.getLogger(__name__)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _contiguous(cache: DynamicCache) -> None:
    """Every layer's keys and values as contiguous tensors (a cropped or grown cache holds views): the compiled
    prefill is specialised on this one layout, so a cached prefix never triggers a recompile."""
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys, layer.values = layer.keys.contiguous(), layer.values.contiguous()


def _frozen(fn, dynamic: bool):
    """torch.compile(fn) whose graphs are compiled with inductor's `freezing` on. The flag is set around every call
    (compiles happen lazily, inside calls): passed as a compile option instead, part of inductor's passes did not
    see it (the vision encoder 18 % slower than with the flag set)."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(fn, dynamic=dynamic)

    def run(*args, **kwargs):
        with inductor_config.patch(freezing=True):
            return compiled(*args, **kwargs)

    return run


def _rewind(cache: StaticCache, length: int) -> None:
    """Set every layer of a StaticCache to hold `length` positions: later ones are overwritten and masked."""
    for layer in cache.layers:
        if layer.is_initialized:
            layer.cumulative_length.fill_(length)


class TorchCache:
    """transformers' DynamicCache behind the KVCache protocol."""

    def __init__(self, cache: DynamicCache):
        self.cache = cache

    @property
    def seq_len(self) -> int:
        return self.cache.get_seq_length()

    def crop(self, length: int) -> None:
        extra = self.seq_len - length
        if extra > 0:
            self.cache.crop(-extra)

    def arrays(self) -> list[np.ndarray]:
        """key, value per layer as float32 numpy [B, H, P, Dh] (for verification)."""
        return [_to_numpy(t) for layer in self.cache.layers for t in (layer.keys, layer.values)]


class StaticTorchCache:
    """The backend's one StaticCache behind the KVCache protocol. Handing out a new one resets it, so an
    older handle is refused if used again (never silently shares positions)."""

    def __init__(self, cache: StaticCache, epoch: int, owner: TorchBackend):
        self.cache, self.epoch, self.owner = cache, epoch, owner
        self.length = 0  # positions held, tracked on the host (reading the device counter would sync)

    @property
    def seq_len(self) -> int:
        return self.length

    def check(self) -> None:
        if self.epoch != self.owner._epoch:
            raise RuntimeError("this KV cache was replaced by a newer new_cache() of the same backend")

    @torch.inference_mode()  # the cache's tensors were made in inference mode (the CUDA copies are)
    def crop(self, length: int) -> None:
        self.check()
        if length < self.length:
            _rewind(self.cache, length)
            self.length = length

    def arrays(self) -> list[np.ndarray]:
        return [_to_numpy(t[:, :, : self.length]) for layer in self.cache.layers for t in (layer.keys, layer.values)]


class _DecodeGraph:
    """One captured decode step (B = 1, S = 1) over the backend's StaticCache, with its input buffers."""

    def __init__(self, backend: TorchBackend, cache: StaticCache, max_len: int):
        model, dev, dt = backend.model, backend.model.device, backend.model.dtype
        self.embeds = torch.zeros(1, 1, backend.spec.hidden_size, dtype=dt, device=dev)  # (1, 1, D)
        self.positions = torch.zeros(1, 1, dtype=torch.long, device=dev)  # (1, 1)
        self.mask = torch.zeros(1, 1, 1, max_len, dtype=dt, device=dev)  # (1, 1, 1, L) additive
        counters = [layer.cumulative_length for layer in cache.layers]
        start = counters[0].clone()

        def step() -> torch.Tensor:
            return model(self.embeds, self.mask, self.positions, cache=cache, logits_to_keep=1).logits

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up (allocator, kernels); writes KV at masked positions, undone below
                step()
        torch.cuda.current_stream().wait_stream(side)
        for c in counters:
            c.copy_(start)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step()  # (1, 1, V); replay advances the cache counters like an eager step

    def run(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.embeds.copy_(embeds)
        self.mask.copy_(mask)
        self.positions.copy_(positions)
        self.graph.replay()
        return self.logits


def resolve_device(device: str) -> torch.device:
    """The device "cpu" / "cuda" / "cuda:N" as a torch device that exists here (else ConfigError naming it)."""
    dev = parse_device(device)
    if not dev.is_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA GPU (torch {torch.__version__})")
    count = torch.cuda.device_count()
    if dev.index >= count:
        raise ConfigError(f"device {device!r} requested but torch sees {count} CUDA GPU(s): indices 0..{count - 1}")
    return torch.device("cuda", dev.index)


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        model: LlavaPhiForCausalLM,
        cuda_graphs: bool | None = None,
        static_cache: bool | None = None,
        torch_compile: bool = False,
    ):
        """cuda_graphs: replay decode steps from a captured CUDA graph (default: on CUDA). static_cache: keep
        the KV cache in a preallocated StaticCache (default: where graphs are used; needed by them).
        torch_compile: vision encoder and prefill as compiled graphs (module docstring), compiled here."""
        self.model = model.eval().requires_grad_(False)  # inference only
        cfg = model.config
        on_cuda = model.device.type == "cuda"
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not on_cuda:
            raise ConfigError("cuda_graphs needs the model on a CUDA device")
        self.static_cache = self.cuda_graphs if static_cache is None else static_cache
        if self.cuda_graphs and not self.static_cache:
            raise ConfigError("cuda_graphs needs static_cache (a graph replays fixed addresses)")
        self._static: StaticCache | None = None
        self._graph: _DecodeGraph | None = None
        self._epoch = 0
        self.device = str(parse_device(str(model.device)))  # "cpu", "cuda" (GPU 0) or "cuda:N"
        self.precision = "int8" if is_int8(model) else DTYPE_NAMES[model.dtype]
        if not on_cuda:
            keep_freed_memory()  # activations reuse freed memory instead of page-faulting new mappings
            if model.dtype == torch.bfloat16:
                use_cpu_vision_attention(model)  # bf16 on the CPU: twice SDPA's speed for the vision tower here
                pad_linear_rows(model)  # oneDNN's bf16 products at full speed at 577 / 697 rows (int8's pad too)
        if on_cuda and self.precision == "fp32":
            # fp32 means fp32: cuDNN would run the patch-embedding convolution in TF32 by default (matmuls
            # already default to full fp32), which moves logits by ~1e-3 and can flip a reference's near-tie.
            torch.backends.cudnn.allow_tf32 = False
        self.spec = ModelSpec(
            hidden_size=cfg.text.hidden_size,
            vocab_size=cfg.text.vocab_size,
            context_length=cfg.text.max_position_embeddings,
            image_tokens=cfg.image_tokens,
            num_layers=cfg.text.num_hidden_layers,
            num_kv_heads=cfg.text.num_key_value_heads,
            head_dim=cfg.head_dim,
        )
        self.torch_compile = bool(torch_compile)
        self._encode, self._forward = model.encode_images, model.forward
        self._encode_attention = model.encode_images_with_attention
        if self.torch_compile:
            if self.static_cache:
                raise ConfigError(
                    "torch_compile compiles the dynamic-cache prefill: it does not combine with "
                    "static_cache / cuda_graphs"
                )
            self._compile()

    def _compile(self) -> None:
        """Compile the vision encoder now (its input shape is fixed). The prefill compiles at its first calls: the
        variants it needs are those real answers hand it (an empty cache, a stored prefix, a grown chat), which
        Assistant makes with a throwaway chat at load; warmed here on made-up caches, the graphs were not the ones
        answers use and two more frozen weight copies stayed in memory."""
        if self.image_attention_problem() is None:
            # one graph for both: the [CLS] attention visual-token reduction selects by costs one extra key
            # projection, and a second compiled tower would hold a second frozen copy of its weights
            self._encode_attention = _frozen(self.model.encode_images_with_attention, dynamic=False)
            self._encode = lambda pixels: self._encode_attention(pixels)[0]
        else:
            self._encode = _frozen(self.model.encode_images, dynamic=False)
        self._forward = _frozen(self.model.forward, dynamic=True)
        size = self.model.config.vision.image_size
        t0 = time.perf_counter()
        self.encode_images(np.zeros((1, 3, size, size), np.float32))
        logger.info("torch_compile: vision encoder compiled in %.1f s", time.perf_counter() - t0)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        dtype: str = "fp32",
        cuda_graphs: bool | None = None,
        threads: int | None = None,
        torch_compile: bool = False,
    ) -> TorchBackend:
        """The checkpoint at `path` on `device` in `dtype` (fp32 / fp16 / bf16, or int8: int8 linears, bf16
        elsewhere, CPU only); `threads`: torch.set_num_threads (process-wide)."""
        if dtype not in TORCH_DTYPES:
            raise ConfigError(f"dtype {dtype!r} is not supported: expected one of {list(TORCH_DTYPES)}")
        if dtype == "int8" and parse_device(device).is_cuda:
            raise ConfigError(
                f"dtype 'int8' (int8 matmuls on the CPU's VNNI / AMX units) runs on the CPU, not on {device!r}: "
                "on a GPU use fp16 / bf16, or an int4 export"
            )
        torch_device = resolve_device(device)
        if check_threads(threads) is not None:
            torch.set_num_threads(threads)  # before loading: the weights' conversion uses the pool too
        model = load_checkpoint(path, dtype="bf16" if dtype == "int8" else dtype, device=torch_device)
        if dtype == "int8":
            logger.info("int8 matmuls: %d linears quantized", quantize_linears(model))
        return cls(model, cuda_graphs=cuda_graphs, torch_compile=torch_compile)

    def thread_settings(self) -> dict[str, int]:
        """The CPU threads this engine runs with, read back from torch (process-wide: torch.set_num_threads)."""
        return {"torch": torch.get_num_threads()}

    def _to_torch(self, a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.model.device, dtype)

    @torch.inference_mode()
    def encode_images(
        self, pixel_values: np.ndarray, with_attention: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """f32 [B, 3, H, W] → f32 [B, N, D]; with_attention: (that, f32 [B, N] the [CLS] attention per token)."""
        pixels = self._to_torch(pixel_values, self.model.dtype)  # (B, 3, H, W)
        if not with_attention:
            return _to_numpy(self._encode(pixels))
        feats, attention = self._encode_attention(pixels)  # (B, N, D), (B, N)
        return _to_numpy(feats), _to_numpy(attention)

    def image_attention_problem(self) -> str | None:
        """Why this model cannot give the [CLS] attention visual-token reduction selects by, or None."""
        try:
            self.model.image_attention_layer()
        except ConfigError as e:
            return str(e)
        return None

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """i64 [B, S] → f32 [B, S, D]."""
        return _to_numpy(self.model.embed_tokens(self._to_torch(input_ids)))

    @torch.inference_mode()
    def new_cache(self, batch_size: int = 1) -> TorchCache | StaticTorchCache:
        if not self.static_cache or batch_size != 1:
            return TorchCache(DynamicCache(config=self.model.config.text))
        if self._static is None:
            self._static = StaticCache(config=self.model.config.text, max_cache_len=self.spec.context_length)
        self._epoch += 1
        _rewind(self._static, 0)  # the previous handle's positions
        return StaticTorchCache(self._static, self._epoch, self)

    @torch.inference_mode()
    def cache_from_arrays(self, arrays: list[np.ndarray]) -> TorchCache | StaticTorchCache:
        """A cache of this engine holding these positions (f32 [B, H, P, Dh] per tensor, past_key_values order),
        in the model's dtype on its device."""
        b = arrays[0].shape[0] if arrays else 1
        length = check_cache_arrays(arrays, 2 * self.spec.num_layers, (b, self.spec.num_kv_heads, self.spec.head_dim))
        cache = self.new_cache(b)  # a StaticCache (batch 1, CUDA graphs) or a DynamicCache: filled as a prefill would
        for i in range(self.spec.num_layers):
            keys, values = (self._to_torch(a, self.model.dtype) for a in arrays[2 * i : 2 * i + 2])  # (B, H, P, Dh)
            cache.cache.update(keys, values, i)
        if isinstance(cache, StaticTorchCache):
            cache.length = length
        return cache

    def _static_mask(self, attention_mask: np.ndarray, start: int, s: int) -> torch.Tensor:
        """(1, P + S) 0/1 → additive (1, 1, S, L): query i sees keys j ≤ start + i that the mask keeps."""
        length = self.spec.context_length
        keys = np.zeros(length, bool)
        keys[: attention_mask.shape[1]] = attention_mask[0] > 0
        causal = np.arange(length)[None, :] <= (start + np.arange(s))[:, None]  # (S, L)
        allowed = torch.from_numpy(causal & keys[None, :]).to(self.model.device)
        zero = torch.zeros((), dtype=self.model.dtype, device=self.model.device)
        low = torch.tensor(torch.finfo(self.model.dtype).min, dtype=self.model.dtype, device=self.model.device)
        return torch.where(allowed, zero, low)[None, None]  # (1, 1, S, L)

    @torch.inference_mode()
    def decode(
        self,
        inputs_embeds: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: TorchCache | StaticTorchCache,
    ) -> tuple[np.ndarray, TorchCache | StaticTorchCache]:
        if isinstance(past, StaticTorchCache):
            return self._decode_static(inputs_embeds, attention_mask, position_ids, past)
        forward, mask = self.model.forward, self._to_torch(attention_mask)  # token steps stay eager
        if self.torch_compile and inputs_embeds.shape[1] > 1:
            _contiguous(past.cache)
            forward = self._forward
            if attention_mask.all():
                # a traced graph cannot look at the mask's values, so transformers would keep a full mask and SDPA
                # its slower masked kernel; no mask tells it the causal pattern is all there is (is_causal)
                mask = None
        out = forward(
            inputs_embeds=self._to_torch(inputs_embeds, self.model.dtype),  # (B, S, D)
            attention_mask=mask,  # (B, P + S) or None: every position kept
            position_ids=self._to_torch(position_ids),  # (B, S)
            cache=past.cache,
            logits_to_keep=1,
        )
        return _to_numpy(out.logits), past  # logits (B, 1, V); cache extended in place

    def _decode_static(
        self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: StaticTorchCache
    ) -> tuple[np.ndarray, StaticTorchCache]:
        past.check()
        s, start = inputs_embeds.shape[1], past.length
        if start + s > self.spec.context_length:
            raise ConfigError(f"{start + s} positions exceed the context length {self.spec.context_length}")
        embeds = self._to_torch(inputs_embeds, self.model.dtype)  # (1, S, D)
        mask = self._static_mask(attention_mask, start, s)  # (1, 1, S, L)
        positions = self._to_torch(position_ids)  # (1, S)
        if self.cuda_graphs and s == 1 and start > 0:
            if self._graph is None:
                with torch.cuda.device(self.model.device):  # capture on the model's GPU, not the current one
                    self._graph = _DecodeGraph(self, past.cache, self.spec.context_length)
            logits = self._graph.run(embeds, mask, positions)
        else:
            logits = self.model(embeds, mask, positions, cache=past.cache, logits_to_keep=1).logits
        past.length += s
        return _to_numpy(logits), past  # logits (1, 1, V)
