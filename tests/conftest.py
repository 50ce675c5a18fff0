import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from sycojax.models import ModelConfig, init_params  # noqa: E402
from support.chat_tokenizer import CharChatTokenizer  # noqa: E402,F401

TINY_LLAMA = ModelConfig(
    arch="llama", vocab_size=101, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=True,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop every compiled XLA program after each test module. Each one holds a few memory maps of JIT code;
    one pytest process compiling the whole suite's programs passed Linux's default `vm.max_map_count` (65,530)
    about 86% of the way through, and XLA:CPU segfaulted in the next compile (CI, 2026-12-07)."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def tiny_llama():
    """A 2-layer random LLaMA (GQA, tied embeddings) with its params."""
    return TINY_LLAMA, init_params(TINY_LLAMA, jax.random.key(0), std=0.1)


@pytest.fixture()
def char_tok():
    return CharChatTokenizer(TINY_LLAMA.vocab_size)
