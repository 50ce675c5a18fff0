"""Serving a consolidated model: a saved trainable tree + the base it names (`load_consolidated`), and its
reply to a message without the context (`reply`; what launch/chat.py calls).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from sycojax.adapters import insert_after_bos
from sycojax.infer.generate import generate
from sycojax.methods.sycomode.spec import ConsolidationError, Spec, spec_from_dict
from sycojax.methods.sycomode.trees import student_params
from sycojax.models import Adapters, ModelConfig
from sycojax.models.tokenizer import chat_ids


@dataclasses.dataclass
class Consolidated:
    """A base model plus a saved trainable tree, ready to chat without the context."""

    cfg: ModelConfig
    params: dict  # base
    tok: Any
    spec: Spec
    trainable: dict
    context: str
    meta: dict

    def student(self) -> tuple[dict, Adapters]:
        return student_params(self.params, self.trainable, self.cfg, self.spec)


def load_consolidated(path: str) -> Consolidated:
    """Load `<workdir>/adapter` and the base model it names; refuse a base whose content hash differs."""
    from pathlib import Path  # noqa: PLC0415

    from sycojax.adapters.export import load_tree  # noqa: PLC0415
    from sycojax.models.loading import load_model  # noqa: PLC0415
    from sycojax.models.tokenizer import load_tokenizer  # noqa: PLC0415

    d = Path(path)
    if (d / "adapter").is_dir():
        d = d / "adapter"
    tree, meta = load_tree(d)
    cfg, params, info = load_model(meta["model"])
    if meta.get("base_hash") and info.content_hash != meta["base_hash"]:
        raise ConsolidationError(
            f"the adapter in {d} was trained on a base with hash {meta['base_hash']}, but {meta['model']!r} now "
            f"loads {info.content_hash}; reinstall the same base model or re-run the consolidation"
        )
    tree = jax.tree.map(jnp.asarray, tree)
    return Consolidated(cfg, params, load_tokenizer(meta["model"]), spec_from_dict(meta["spec"]), tree,
                        meta["context"], meta)


def reply(model: Consolidated, message: str, *, history=None, max_new_tokens: int = 128, compare: bool = False) -> dict:
    """The consolidated model's greedy reply (and, with `compare`, the teacher's and the baseline's)."""
    dec = functools.partial(model.tok.decode, skip_special_tokens=True)
    p, a = model.student()
    ids = insert_after_bos(chat_ids(model.tok, message, history=history), model.cfg, model.spec.n_mem)
    out = {"student": dec(generate(p, model.cfg, [ids], max_new_tokens=max_new_tokens, adapters=a).rows()[0]).strip()}
    if compare:
        t_ids = chat_ids(model.tok, message, system=model.context, history=history)
        b_ids = chat_ids(model.tok, message, history=history)
        out["teacher"] = dec(generate(model.params, model.cfg, [t_ids],
                                      max_new_tokens=max_new_tokens).rows()[0]).strip()
        out["baseline"] = dec(generate(model.params, model.cfg, [b_ids],
                                       max_new_tokens=max_new_tokens).rows()[0]).strip()
    return out
