"""Document memory's training step on cached activations: only the hooked block and the LM head run.

The base is frozen, so the stream entering the hooked block (`hidden_at`) is computed once per window
(`cache_hidden`); every step then runs `forward(embeddings=h, start_layer=hook_block)` twice, with the
document's own key (`ce_pos`) and a negative key (`ce_neg`), and `guidance_loss` combines them.
"""

from __future__ import annotations

from sycojax.masks import causal_padding, positions_from_valid
from sycojax.methods.docmem.module import DocMemConfig, DocMemHook, negative_keys
from sycojax.methods.shared import cache_hidden  # noqa: F401 - part of this module's API
from sycojax.models import BlockModules, ModelConfig, Module, forward
from sycojax.objectives import guidance_loss, row_nll


def window_nll(params, module_params, c: DocMemConfig, cfg: ModelConfig, layer: int, h, tokens, valid, weights, key):
    """Per-row mean next-token NLL of the windows with `key` ((B, key_dim), or None: the ungated module)."""
    mods = BlockModules(hooks={layer: Module(DocMemHook(c), module_params)})
    logits = forward(params, None, cfg=cfg, embeddings=h, start_layer=layer, positions=positions_from_valid(valid),
                     mask=causal_padding(valid), modules=mods, module_ctx={"doc_key": key}).logits
    return row_nll(logits[:, :-1], tokens[:, 1:], weights[:, 1:])


def make_loss_fn(cfg: ModelConfig, c: DocMemConfig, layer: int, *, negative: str, tau: float, alpha: float, form: str):
    def loss_fn(trainable, frozen, batch, rng):
        keys = frozen["keys"]
        args = (frozen["base"], trainable, c, cfg, layer, batch["h"], batch["tokens"], batch["valid"], batch["weights"])
        ce_pos = window_nll(*args, keys[batch["doc"]]).mean()
        ce_neg = window_nll(*args, negative_keys(rng, keys, batch["doc"], negative)).mean()
        loss = guidance_loss(ce_pos, ce_neg, tau=tau, alpha=alpha, form=form)
        return loss, {"ce_pos": ce_pos, "ce_neg": ce_neg}

    return loss_fn
