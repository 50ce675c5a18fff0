"""CCM's trainable trees: COMP-token embeddings (+ SUM for merge) and the conditional LoRA.

    comp:  (n_tok, D) fp32 rows for ids V .. V+n_tok-1; slot k starts at the mean of vocab rows k::n_tok
           (upstream Context-Memory's initialisation).
    sum:   merge_recur only: (n_tok, D) fp32 rows for ids V+n_tok .. V+2·n_tok-1, initialised like `comp`.
           SUM_k follows COMP_k in every compressed segment; in every layer its K/V are replaced by the running
           mean of the COMP_k K/V at or before it (`merge.py`), so these rows only mark the slots: their K/V
           never come from them and they get no gradient (as upstream, whose SUM rows train to nothing either).
    lora:  q, k, v, o of every block, r = 8, alpha = 16 (upstream); gated by `is_comp` (COMP and SUM), so text
           positions run the frozen base exactly.

Two more kinds train through the same rows, loss and loop, as the references `launch/eval_ccm.py` measures CCM
against (upstream's `--attn_type gist` baseline, and a fair upper bound):

    gist:  the whole context is compressed at once: `[BOS] c1 SEP ... c(t-1) C×n SEP I SEP O EOS`, one COMP group,
           so the concat_recur rule on that row is exactly the gist mask; inference re-reads the context every turn.
    full:  no COMP token: the uncompressed row with the LoRA at every position (trees: `lora` only), i.e. the full
           context model fine-tuned on the same dialogs, so CCM's gap is not flattered by its own fine-tuning.

`check_trees` is the one place that says which trees a spec needs: `adapters` and `run.load_ccm` call it, so
merge trees run under a concat spec (or the reverse) fail with one line instead of a wrong forward.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.adapters import LoraConfig, init_lora
from sycojax.masks.ccm import CCM_ATTN_TYPES
from sycojax.models import Adapters, ModelConfig
from sycojax.models.model import _get

KINDS: tuple[str, ...] = (*CCM_ATTN_TYPES, "gist", "full")


@dataclasses.dataclass(frozen=True)
class CCMSpec:
    n_tok: int = 2
    attn_type: str = "concat_recur"
    lora: LoraConfig = dataclasses.field(default_factory=lambda: LoraConfig(rank=8, alpha=16.0,
                                                                            targets=("q", "k", "v", "o")))
    sink: bool = False

    def __post_init__(self):
        if self.n_tok < 1:
            raise ValueError(f"n_tok={self.n_tok}: CCM needs at least one COMP token per turn")
        if self.attn_type not in KINDS:
            raise ValueError(f"attn_type={self.attn_type!r}: use one of {', '.join(KINDS)}")

    @property
    def merge(self) -> bool:
        """merge_recur: one memory of n_tok entries, the running mean of the turns' COMP K/V."""
        return self.attn_type == "merge_recur"

    @property
    def gist(self) -> bool:
        """The whole context compressed at once into one COMP group (a baseline, re-read every turn)."""
        return self.attn_type == "gist"

    @property
    def full(self) -> bool:
        """The uncompressed reference: no COMP tokens, LoRA everywhere."""
        return self.attn_type == "full"

    @property
    def recurrent(self) -> bool:
        """Memory carried from turn to turn (`memory.update`): concat_recur and merge_recur."""
        return self.attn_type in CCM_ATTN_TYPES


def comp_first_id(cfg: ModelConfig) -> int:
    return cfg.vocab_size


def sum_first_id(cfg: ModelConfig, spec: CCMSpec) -> int:
    return cfg.vocab_size + spec.n_tok


def group_ids(cfg: ModelConfig, spec: CCMSpec) -> list[int]:
    """The ids written after every compressed turn: `COMP×n` (concat, gist) or `COMP×n SUM×n` (merge, as upstream);
    none for the full reference."""
    if spec.full:
        return []
    return list(range(cfg.vocab_size, cfg.vocab_size + (2 if spec.merge else 1) * spec.n_tok))


def init_comp(params: dict, cfg: ModelConfig, n_tok: int) -> jax.Array:
    table = np.asarray(_get(params, cfg.embed_path), np.float32)
    return jnp.asarray(np.stack([table[k::n_tok].mean(0) for k in range(n_tok)]))


def init_trainable(params: dict, cfg: ModelConfig, spec: CCMSpec, rng: jax.Array) -> dict:
    tr = {"lora": init_lora(params, cfg, spec.lora, rng)}
    if not spec.full:
        tr["comp"] = init_comp(params, cfg, spec.n_tok)
    if spec.merge:
        tr["sum"] = init_comp(params, cfg, spec.n_tok)
    return tr


def check_trees(tree: dict, spec: CCMSpec, cfg: ModelConfig | None = None) -> None:
    """Raise ValueError unless `tree` holds exactly the trees `spec` trains (and, given `cfg`, fits the model)."""
    want = {"lora"} if spec.full else {"comp", "lora", "sum"} if spec.merge else {"comp", "lora"}
    if set(tree) != want:
        other = "'merge_recur'" if "sum" in tree else "'full'" if "comp" not in tree else "'concat_recur' (or 'gist')"
        raise ValueError(f"these CCM trees ({', '.join(sorted(tree))}) were trained with attn_type={other}; "
                         f"attn_type={spec.attn_type!r} needs {', '.join(sorted(want))}")
    if cfg is not None:
        for name in sorted(want - {"lora"}):
            if tuple(tree[name].shape) != (spec.n_tok, cfg.hidden_size):
                raise ValueError(f"{name} embeddings {tuple(tree[name].shape)} do not fit this model "
                                 f"({spec.n_tok} x {cfg.hidden_size}); use the base model they were trained on")


def adapters(trainable: dict, spec: CCMSpec, is_comp: jax.Array) -> Adapters:
    """The model's view of the trees for one batch: LoRA only where `is_comp` (COMP and SUM positions), the COMP
    (then SUM) rows as the extra ids `V ..`. The full reference has no COMP rows and its LoRA acts everywhere."""
    check_trees(trainable, spec)
    if spec.full:
        return Adapters(lora=trainable["lora"], lora_scale=spec.lora.alpha / spec.lora.rank)
    rows = jnp.concatenate([trainable["comp"], trainable["sum"]]) if spec.merge else trainable["comp"]
    return Adapters(lora=trainable["lora"], gate=is_comp.astype(jnp.float32), embeddings=rows,
                    lora_scale=spec.lora.alpha / spec.lora.rank)
