"""Run by test_train_multidevice.py in a subprocess with 8 simulated CPU devices.

Trains the toy problem 3 steps on (a) 8-way data parallelism, (b) one device, (c) a
data=2 x fsdp=2 x tensor=2 mesh with the MLP sharded by rules; writes losses, params and the
shardings it observed to the JSON file named by argv[1].
"""

import json
import os
import sys

import jax
import numpy as np
import train_toy as toy

from sycojax.models import ModelConfig, init_params
from sycojax.train import ArrayIterator, make_mesh, shard_batch, tree_shardings
from sycojax.train.sharding import batch_sharding, path_str, to_microbatches

assert jax.device_count() == 8, jax.devices()
out, workdir = sys.argv[1], sys.argv[2]
report = {}


def spec(sharding):
    return [list(a) if isinstance(a, tuple) else a for a in sharding.spec]


runs = {
    "dp8": {"mesh": make_mesh({"data": -1})},
    "one": {"mesh": make_mesh({"data": 1})},
    "dp2_fsdp2_tp2": {"mesh": make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), "param_rules": toy.MLP_RULES},
}
for name, kw in runs.items():
    res = toy.run(os.path.join(workdir, name), 3, **kw)
    report[name] = {
        "losses": [r["loss"] for r in res.history if "loss" in r],
        "params": jax.tree.map(lambda x: np.asarray(x).tolist(), res.trainable),
        "param_specs": jax.tree.map(lambda x: spec(x.sharding), res.trainable),
        "opt_specs": {
            path_str(p): spec(x.sharding)
            for p, x in jax.tree_util.tree_leaves_with_path(res.opt_state)
            if "dense1/kernel" in path_str(p)
        },
        "batch_devices": len(res.batch_sharding.device_set),
        "batch_shard_shape": list(res.batch_sharding.shard_shape((1, 8, toy.D_IN))),
    }

# The batch arrays themselves: 8 shards of one row each, holding the right rows.
mesh = runs["dp8"]["mesh"]
host = next(ArrayIterator(toy.arrays(), 8, seed=3))
micro = to_microbatches(host, 1)
arrays = shard_batch(micro, batch_sharding(mesh))
x = arrays["x"]
report["batch_array"] = {
    "num_devices": len(x.sharding.device_set),
    "shard_shapes": sorted({tuple(s.data.shape) for s in x.addressable_shards}),
    "num_shards": len(x.addressable_shards),
    "values_match": bool(np.array_equal(np.asarray(x), micro["x"])),
}

# The default rules on a real sycojax param tree: FSDP over `embed`, tensor parallel over heads / mlp / vocab.
cfg = ModelConfig(
    arch="llama",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
params = init_params(cfg, jax.random.key(0))
specs = tree_shardings(params, make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
report["llama_specs"] = {
    "q_proj": spec(specs["model"]["layers"]["self_attn"]["q_proj"]["weight"]),
    "o_proj": spec(specs["model"]["layers"]["self_attn"]["o_proj"]["weight"]),
    "down_proj": spec(specs["model"]["layers"]["mlp"]["down_proj"]["weight"]),
    "embed_tokens": spec(specs["model"]["embed_tokens"]["weight"]),
    "norm": spec(specs["model"]["norm"]["weight"]),
}

# Consolidation with sequence packing (`sycomode.loop_packing`): the shared loop on 4 data-parallel devices,
# each packing its 2 rows of a batch of 8, against one device unpacked. Rows of 5..19 real tokens in width 32.
from sycojax.adapters import LoraConfig
from sycojax.methods import sycomode as sm
from sycojax.train import default_config, train

rng = np.random.default_rng(0)
n, width, r_max, k = 16, 32, 4, 8
lengths = rng.integers(5, 20, size=n)
tokens = np.zeros((n, width), np.int32)
resp_pos = np.zeros((n, r_max), np.int32)
resp_w = np.zeros((n, r_max), np.float32)
for i, length in enumerate(lengths):
    tokens[i, :length] = rng.integers(3, cfg.vocab_size, size=length)
    r = min(r_max, int(length) - 2)
    resp_pos[i, :r] = np.arange(length - 1 - r, length - 1)
    resp_w[i, :r] = 1.0
logits = rng.normal(size=(n, r_max, cfg.vocab_size)).astype(np.float32)
idx = np.argsort(-logits, axis=-1)[..., :k].astype(np.int32)
logp = np.take_along_axis(logits - np.log(np.exp(logits).sum(-1, keepdims=True)), idx, axis=-1)
targets = sm.Targets(tokens, resp_pos, resp_w, idx, logp)
spec = sm.Spec(method="lora", lora=LoraConfig(rank=4, alpha=8.0), topk=k, topk_tail=True)
init = jax.device_get(jax.tree.map(lambda x: x + 0.05, sm.init_trainable(params, cfg, spec, jax.random.key(0))))  # host: train donates
report["packed"] = {}
for name, dp, pack in (("dp4_packed", 4, True), ("one_unpacked", 1, False)):
    c = default_config()
    c.train.num_steps, c.train.batch_size, c.train.log_every = 3, 8, 1
    c.optim.lr, c.ckpt.every, c.logging.progress_bar = 1e-2, 0, False
    c.mesh.data = dp
    plan = sm.loop_packing(targets, c, enabled=pack)
    res = train(sm.make_loss_fn(cfg, spec, plan), init, {"base": params}, ArrayIterator(targets.train_arrays(), 8, seed=0),
                c, os.path.join(workdir, name), metadata={"base_model": "tiny", "base_hash": "0"})
    report["packed"][name] = {
        "plan": None if plan is None else [plan.rows, plan.length],
        "losses": [r["loss"] for r in res.history if "loss" in r],
        "lora": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(res.trainable)],
    }

with open(out, "w") as f:
    json.dump(report, f)
