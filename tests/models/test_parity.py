"""Layer-by-layer parity with Hugging Face PyTorch on tiny random configs (fp32, atol 1e-4).

Each HF model is saved with `save_pretrained` and loaded by our loader, so the test covers the
name map as well as the forward: logits AND every entry of `output_hidden_states` must match.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf

from sycojax.masks import causal_padding, positions_from_valid
from sycojax.models import forward
from sycojax.models.loading import load_model

V = 97
CONFIGS = {
    "llama_gqa_untied": lambda: tf.LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=128),
    "llama_tied_mqa": lambda: tf.LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, tie_word_embeddings=True, max_position_embeddings=128),
    "llama3_rope_scaling": lambda: tf.LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=256,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}),
    "neox_parallel_partial_rotary": lambda: tf.GPTNeoXConfig(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        rotary_pct=0.25, use_parallel_residual=True),
    "neox_sequential": lambda: tf.GPTNeoXConfig(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        rotary_pct=0.5, use_parallel_residual=False),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_and_every_hidden_state_match_transformers(name, tmp_path):
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(CONFIGS[name]()).eval()
    with torch.no_grad():  # move away from the near-zero init so every weight matters
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    cfg, params, _ = load_model(str(tmp_path))
    if name == "llama3_rope_scaling":
        assert cfg.rope_scaling is not None and cfg.rope_scaling.factor == 8.0
    ids = torch.randint(0, V, (2, 40))
    lengths = [40, 27]  # second row left-padded
    attn = torch.zeros(2, 40, dtype=torch.long)
    for i, n in enumerate(lengths):
        attn[i, 40 - n:] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(ids, attention_mask=attn, position_ids=pos, output_hidden_states=True)
    valid = jnp.asarray(attn.numpy().astype(bool))
    out = forward(params, jnp.asarray(ids.numpy()), cfg=cfg, positions=positions_from_valid(valid),
                  mask=causal_padding(valid), return_hidden=True)
    keep = attn.numpy().astype(bool)  # padded positions are undefined on both sides
    assert out.hidden_states.shape[0] == len(ref.hidden_states) == cfg.num_layers + 1
    for i, h in enumerate(ref.hidden_states):
        np.testing.assert_allclose(np.asarray(out.hidden_states[i])[keep], h.numpy()[keep], atol=1e-4,
                                   err_msg=f"hidden state {i}")
    np.testing.assert_allclose(np.asarray(out.logits)[keep], ref.logits.numpy()[keep], atol=1e-4)
