"""Saving adapter trees: a flat safetensors file for any tree, and PEFT's LoRA format.

`save_tree` / `load_tree` write a nested dict of arrays as one safetensors file whose keys are the
'/'-joined paths, plus a JSON sidecar (what the tree is, which base it belongs to). `export_peft`
writes `adapter_model.safetensors` + `adapter_config.json` that `peft.PeftModel.from_pretrained`
loads onto the transformers model (layers unstacked: `base_model.model.model.layers.{i}.…`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from sycojax.models.config import ModelConfig


def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
    else:
        out[prefix[:-1]] = np.ascontiguousarray(np.asarray(jax.device_get(tree), np.float32))
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for k, v in flat.items():
        *head, last = k.split("/")
        d = tree
        for h in head:
            d = d.setdefault(h, {})
        d[last] = v
    return tree


def save_tree(tree: Any, directory: str | os.PathLike, meta: dict, name: str = "adapter") -> Path:
    """Write `<dir>/<name>.safetensors` + `<dir>/<name>.json` atomically (tmp files, then rename)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    st, js = d / f"{name}.safetensors", d / f"{name}.json"
    save_file(_flatten(tree), str(st) + ".tmp")
    js.with_suffix(".json.tmp").write_text(json.dumps(meta, indent=2, default=str))
    os.replace(str(st) + ".tmp", st)
    os.replace(js.with_suffix(".json.tmp"), js)
    return st


def load_tree(directory: str | os.PathLike, name: str = "adapter") -> tuple[dict, dict]:
    d = Path(directory)
    st, js = d / f"{name}.safetensors", d / f"{name}.json"
    if not st.exists() or not js.exists():
        raise FileNotFoundError(
            f"{d} holds no saved adapter ({st.name} + {js.name}); point to the `adapter/` folder of a "
            "consolidation workdir (launch/consolidate.py writes it at the end of a run)"
        )
    try:
        flat = load_file(str(st))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on a bad file
        raise ValueError(f"{st} is not a readable safetensors file ({e}); re-run the consolidation") from e
    return _unflatten(flat), json.loads(js.read_text())


def export_peft(lora: dict, cfg: ModelConfig, out_dir: str | os.PathLike, *, rank: int, alpha: float,
                base_model: str = "") -> Path:
    """PEFT LoRA adapter directory for the transformers model of `cfg`."""
    if cfg.arch != "llama":
        raise NotImplementedError("PEFT export is implemented for LLaMA-family models")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    targets = set()
    for block, mods in lora["model"]["layers"].items():
        for name, ab in mods.items():
            targets.add(name)
            a, b = np.asarray(ab["lora_A"], np.float32), np.asarray(ab["lora_B"], np.float32)
            for i in range(a.shape[0]):
                pre = f"base_model.model.model.layers.{i}.{block}.{name}"
                tensors[f"{pre}.lora_A.weight"] = np.ascontiguousarray(a[i])
                tensors[f"{pre}.lora_B.weight"] = np.ascontiguousarray(b[i])
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": sorted(targets), "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "base_model_name_or_path": base_model, "use_rslora": False, "init_lora_weights": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out
