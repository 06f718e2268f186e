"""Work per stage from the architecture: weight bytes read per decoded token and FLOPs of the vision
encoder and the prefill, for the floors and for extrapolating N measured decoder layers to Phi-2's 32."""

from __future__ import annotations

from dataclasses import dataclass

PHI2_LAYERS = 32
PHI2_HIDDEN = 2560


@dataclass(frozen=True)
class Arch:
    """The dimensions that set the cost (from a checkpoint's config)."""

    text_hidden: int
    text_ffn: int
    text_layers: int
    vocab: int
    vision_hidden: int
    vision_ffn: int
    vision_layers_run: int  # up to the selected feature layer
    vision_tokens: int  # patches + CLS
    projector_hidden: int

    @classmethod
    def from_config(cls, config) -> Arch:
        v, t = config.vision, config.text
        layer = config.select_layer
        run = layer + 1 if layer >= 0 else v.num_hidden_layers + layer + 1
        patches = (v.image_size // v.patch_size) ** 2
        return cls(
            t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.vocab_size,
            v.hidden_size, v.intermediate_size, run, patches + 1, t.hidden_size,
        )  # fmt: skip

    def layer_params(self) -> int:
        """Matmul weights of one Phi decoder layer (q, k, v, dense, fc1, fc2)."""
        return 4 * self.text_hidden**2 + 2 * self.text_hidden * self.text_ffn

    def decode_params(self, layers: int | None = None) -> int:
        """Weights read per decoded token: every layer + lm_head (one embedding row is negligible)."""
        return (self.text_layers if layers is None else layers) * self.layer_params() + self.vocab * self.text_hidden

    def vision_flops_parts(self) -> tuple[float, float]:
        """(FLOPs of the linears and the projector, FLOPs of attention's two products) of one frame."""
        d, f, t = self.vision_hidden, self.vision_ffn, self.vision_tokens
        projector = 2 * (t - 1) * (d * self.projector_hidden + self.projector_hidden**2)
        linears = self.vision_layers_run * 2 * t * (4 * d * d + 2 * d * f) + projector
        return linears, self.vision_layers_run * 4 * t * t * d

    def vision_flops(self) -> float:
        return sum(self.vision_flops_parts())

    def prefill_flops_parts(self, positions: int, layers: int | None = None) -> tuple[float, float, float]:
        """(FLOPs of the decoder layers' linears, of causal attention — half of 4·T²·d —, of lm_head on the last
        position) of a prefill over `positions`."""
        d, t, n = self.text_hidden, positions, self.text_layers if layers is None else layers
        return n * 2 * t * self.layer_params(), n * 2 * t * t * d, 2 * d * self.vocab

    def prefill_flops(self, positions: int, layers: int | None = None) -> float:
        return sum(self.prefill_flops_parts(positions, layers))

    def full_size_factors(self, positions: int) -> dict[str, float]:
        """Multipliers from this model's layer count to Phi-2's 32 (decode by weights, prefill by FLOPs)."""
        return {
            "decode": self.decode_params(PHI2_LAYERS) / self.decode_params(),
            "prefill": self.prefill_flops(positions, PHI2_LAYERS) / self.prefill_flops(positions),
        }
