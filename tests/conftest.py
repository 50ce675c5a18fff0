import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

from sycojax.models import ModelConfig, init_params  # noqa: E402
from support.chat_tokenizer import CharChatTokenizer  # noqa: E402,F401

TINY_LLAMA = ModelConfig(
    arch="llama", vocab_size=101, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=True,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)


@pytest.fixture(scope="session")
def tiny_llama():
    """A 2-layer random LLaMA (GQA, tied embeddings) with its params."""
    return TINY_LLAMA, init_params(TINY_LLAMA, jax.random.key(0), std=0.1)


@pytest.fixture()
def char_tok():
    return CharChatTokenizer(TINY_LLAMA.vocab_size)
