"""Model configuration: one frozen dataclass for every supported architecture.

`ModelConfig` is static under `jax.jit` (hashable, frozen). It is built from a Hugging Face
`config.json` dict (`ModelConfig.from_hf`) or from GGUF metadata (see `sycojax.models.loading`),
and written back to `config.json` on export (`ModelConfig.to_hf`).

Param trees mirror Hugging Face names with the layers STACKED on a leading axis (one `lax.scan`
over layers), weights kept in PyTorch `(out, in)` layout:

LLaMA (`arch="llama"`)::

    {"model": {"embed_tokens": {"weight": (V, D)},
               "layers": {"input_layernorm": {"weight": (L, D)},
                          "self_attn": {"q_proj": {"weight": (L, H*hd, D)}, "k_proj": ..., "v_proj": ...,
                                        "o_proj": {"weight": (L, D, H*hd)}},
                          "post_attention_layernorm": {"weight": (L, D)},
                          "mlp": {"gate_proj": {"weight": (L, F, D)}, "up_proj": ..., "down_proj": (L, D, F)}},
               "norm": {"weight": (D,)}},
     "lm_head": {"weight": (V, D)}}            # absent when tie_word_embeddings

GPT-NeoX / Pythia (`arch="gpt_neox"`)::

    {"gpt_neox": {"embed_in": {"weight": (V, D)},
                  "layers": {"input_layernorm": {"weight", "bias"}, "post_attention_layernorm": {...},
                             "attention": {"query_key_value": {"weight": (L, 3*H*hd, D), "bias"},
                                           "dense": {"weight": (L, D, H*hd), "bias"}},
                             "mlp": {"dense_h_to_4h": {...}, "dense_4h_to_h": {...}}},
                  "final_layer_norm": {"weight", "bias"}},
     "embed_out": {"weight": (V, D)}}

HF checkpoint key `model.layers.7.self_attn.q_proj.weight` is leaf
`params["model"]["layers"]["self_attn"]["q_proj"]["weight"][7]`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_ARCHS = ("llama", "gpt_neox")
_HF_ARCH = {"llama": "LlamaForCausalLM", "gpt_neox": "GPTNeoXForCausalLM"}


class ConfigError(ValueError):
    """A model config that sycojax cannot run; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """LLaMA-3 style frequency scaling (`rope_type="llama3"` in HF)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str  # "llama" | "gpt_neox"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rotary_dim: int | None = None  # GPT-NeoX partial rotary: rotary_pct * head_dim; None = head_dim
    norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    use_parallel_residual: bool = True  # GPT-NeoX only
    attention_bias: bool = False  # LLaMA q/k/v/o bias
    mlp_bias: bool = False  # LLaMA mlp bias
    hidden_act: str = "silu"
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.arch not in SUPPORTED_ARCHS:
            raise ConfigError(
                f"unsupported architecture {self.arch!r}; sycojax runs {', '.join(SUPPORTED_ARCHS)}. "
                "Convert the checkpoint to one of these or add a model in sycojax/models/ (see WORKSPACE.md)."
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}"
            )

    @property
    def rot_dim(self) -> int:
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    @property
    def embed_path(self) -> tuple[str, ...]:
        return ("model", "embed_tokens", "weight") if self.arch == "llama" else ("gpt_neox", "embed_in", "weight")

    @property
    def linear_names(self) -> tuple[str, ...]:
        """Short names of the per-layer linear modules (the LoRA targets)."""
        if self.arch == "llama":
            return ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        return ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Build from a Hugging Face `config.json` dict."""
        mt = hf.get("model_type")
        archs = hf.get("architectures") or []
        if mt in ("llama", "mistral", "qwen2") and mt != "llama" and not hf.get("attention_bias", mt == "qwen2"):
            mt = "llama"
        if mt not in SUPPORTED_ARCHS:
            raise ConfigError(
                f"unsupported model_type {mt!r} (architectures={archs}); sycojax runs "
                f"{', '.join(SUPPORTED_ARCHS)} (LLaMA-family and GPT-NeoX/Pythia checkpoints)."
            )
        if mt == "llama":
            H = hf["num_attention_heads"]
            D = hf["hidden_size"]
            rs = hf.get("rope_scaling") or hf.get("rope_parameters")
            scaling = None
            theta = hf.get("rope_theta")
            if isinstance(rs, dict):
                theta = theta or rs.get("rope_theta")
                rtype = rs.get("rope_type", rs.get("type"))
                if rtype == "llama3":
                    scaling = RopeScaling(
                        float(rs["factor"]),
                        float(rs["low_freq_factor"]),
                        float(rs["high_freq_factor"]),
                        int(rs["original_max_position_embeddings"]),
                    )
                elif rtype not in (None, "default"):
                    raise ConfigError(f"rope_scaling type {rtype!r} is not supported; supported: default, llama3")
            return cls(
                arch="llama",
                vocab_size=hf["vocab_size"],
                hidden_size=D,
                intermediate_size=hf["intermediate_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=H,
                num_kv_heads=hf.get("num_key_value_heads") or H,
                head_dim=hf.get("head_dim") or D // H,
                max_position_embeddings=hf.get("max_position_embeddings", 2048),
                rope_theta=float(theta or 10000.0),
                rope_scaling=scaling,
                norm_eps=hf.get("rms_norm_eps", 1e-6),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                attention_bias=bool(hf.get("attention_bias", False)),
                mlp_bias=bool(hf.get("mlp_bias", False)),
                hidden_act=hf.get("hidden_act", "silu"),
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=_tuple_or_int(hf.get("eos_token_id")),
                pad_token_id=hf.get("pad_token_id"),
            )
        H = hf["num_attention_heads"]
        D = hf["hidden_size"]
        hd = D // H
        rs = hf.get("rope_parameters") or {}
        pct = hf.get("rotary_pct", rs.get("partial_rotary_factor", 1.0))
        theta = hf.get("rotary_emb_base", rs.get("rope_theta", 10000.0))
        return cls(
            arch="gpt_neox",
            vocab_size=hf["vocab_size"],
            hidden_size=D,
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=H,
            num_kv_heads=H,
            head_dim=hd,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rope_theta=float(theta),
            rotary_dim=int(hd * pct),
            norm_eps=hf.get("layer_norm_eps", 1e-5),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            use_parallel_residual=bool(hf.get("use_parallel_residual", True)),
            hidden_act=hf.get("hidden_act", "gelu"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=_tuple_or_int(hf.get("eos_token_id")),
            pad_token_id=hf.get("pad_token_id"),
        )

    def to_hf(self) -> dict[str, Any]:
        """The `config.json` dict that transformers loads for this config."""
        common = dict(
            architectures=[_HF_ARCH[self.arch]],
            model_type=self.arch,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            hidden_act=self.hidden_act,
            bos_token_id=self.bos_token_id,
            eos_token_id=list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            pad_token_id=self.pad_token_id,
            torch_dtype="float32",
        )
        if self.arch == "llama":
            rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
            if self.rope_scaling is not None:
                rope = {"rope_type": "llama3", "rope_theta": self.rope_theta, **dataclasses.asdict(self.rope_scaling)}
            return dict(
                common,
                num_key_value_heads=self.num_kv_heads,
                head_dim=self.head_dim,
                rms_norm_eps=self.norm_eps,
                rope_theta=self.rope_theta,
                rope_scaling=rope,
                rope_parameters=rope,
                attention_bias=self.attention_bias,
                mlp_bias=self.mlp_bias,
            )
        pct = self.rot_dim / self.head_dim
        return dict(
            common,
            rotary_pct=pct,
            rotary_emb_base=self.rope_theta,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta, "partial_rotary_factor": pct},
            layer_norm_eps=self.norm_eps,
            use_parallel_residual=self.use_parallel_residual,
        )


def _tuple_or_int(x):
    return tuple(x) if isinstance(x, list) else x
