"""SyCoMode's experiments: metrics on hand-made logits, raw-text prompts, probes, alphabet sampling, a tiny run."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.methods import sycomode as sm
from sycojax.methods import sycomode_experiments as se

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- metrics on hand-made cases


def test_letter_prob_is_the_softmax_restricted_to_the_letters():
    v = 40
    letters = list(range(10, 36))  # 26 letter ids
    logits = np.full(v, -5.0, np.float32)
    logits[0] = 50.0  # a non-letter token with most of the full-vocabulary mass: must not count
    logits[letters[6]] = 2.0  # "g"
    logits[letters[7]] = 1.0  # "h"
    z = logits[letters]
    expected = np.exp(2.0) / np.exp(z).sum()
    assert se.letter_prob(jnp.asarray(logits), letters, "g") == pytest.approx(expected, rel=1e-5)
    assert se.letter_prob(jnp.asarray(logits), letters, "h") == pytest.approx(np.exp(1.0) / np.exp(z).sum(), rel=1e-5)
    uniform = jnp.zeros(v)
    assert se.letter_prob(uniform, letters, "q") == pytest.approx(1 / 26, rel=1e-5)


def test_answer_perplexity_uses_only_the_answer_positions():
    v = 8
    probs = np.full((5, v), 1e-3)
    # prompt = 3 tokens, answer = [4, 6]: predicted at positions 2 and 3
    probs[2, 4] = 0.5
    probs[3, 6] = 0.125
    probs[0, :] = probs[1, :] = probs[4, :] = 1 / v  # prompt and trailing positions: must not matter
    logits = jnp.asarray(np.log(probs / probs.sum(-1, keepdims=True)), jnp.float32)
    p2 = probs[2, 4] / probs[2].sum()
    p3 = probs[3, 6] / probs[3].sum()
    expected = np.exp(-(np.log(p2) + np.log(p3)) / 2)
    assert se.answer_perplexity(logits, 3, [4, 6]) == pytest.approx(expected, rel=1e-5)
    assert se.answer_perplexity(jnp.zeros((4, v)), 2, [1, 2]) == pytest.approx(v, rel=1e-5)  # uniform: ppl = V
    with pytest.raises(ValueError, match="non-empty"):
        se.answer_perplexity(logits, 3, [])


def test_alphabet_cases_are_consecutive_runs_of_4_to_25_letters():
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(500):
        context, answer = se.alphabet_case(rng)
        letters = context.split(" ")
        start = se.ALPHABET.index(letters[0])
        assert letters == list(se.ALPHABET[start : start + len(letters)])
        assert 4 <= len(letters) <= 25 and answer == se.ALPHABET[start + len(letters)]
        lengths.add(len(letters))
    assert min(lengths) == 4 and max(lengths) >= 20


def test_sentence_probes_stop_before_the_end_of_each_sentence():
    assert se.sentence_probes("The Bohr tower is in Topeka.") == ["The Bohr"]
    probes = se.sentence_probes("One two three four five six seven. Short one. A b c d e f g h i j!")
    assert probes == ["One two", "One two three four five six", "A b", "A b c d e f"]  # cut after words 2, 6, ...


# --------------------------------------------------------------------------- raw-text prompts (tiny tokenizer)


def test_raw_prompts_put_the_context_only_in_the_teacher(tiny_llama, char_tok):
    cfg, _ = tiny_llama
    fmt = se.RawFormat.for_model(char_tok, cfg)  # "<|endoftext|>" is not one char-token: falls back to BOS
    assert fmt.start == cfg.bos_token_id and fmt.cue == " Answer:"
    p = se.raw_prompts(char_tok, cfg, fmt, "abc", ["", "q"], n_mem=2)
    enc = lambda t: char_tok(t)["input_ids"]
    assert p.teacher_prefix + p.teacher_suffix[0] == [fmt.start] + enc("abc")
    assert p.teacher_prefix + p.teacher_suffix[1] == [fmt.start] + enc("abc q")
    mem = [cfg.vocab_size, cfg.vocab_size + 1]
    assert p.student == [[fmt.start] + mem, [fmt.start] + mem + enc("q")]
    assert se.full_ids(char_tok, fmt, "abc", "who?") == [fmt.start] + enc("abc") + enc(" who? Answer:")
    assert se.plain_ids(char_tok, cfg, fmt, "who?") == [fmt.start] + enc("who? Answer:")
    assert se.full_ids(char_tok, fmt, "a b c", "") == [fmt.start] + enc("a b c")  # experiment 1: no question, no cue


def test_clm_targets_predict_each_next_context_token(tiny_llama, char_tok):
    cfg, _ = tiny_llama
    fmt = se.RawFormat(1)
    spec = sm.Spec(method="memory", num_mem_tokens=2, objective="causal_language_model", topk=4)
    t = se.clm_targets(char_tok, cfg, fmt, "abcd", spec)
    row = t.tokens[0]
    assert row[0] == 1 and row[1:3].tolist() == [cfg.vocab_size, cfg.vocab_size + 1]
    assert t.resp_pos[0].tolist() == [2, 3, 4, 5]  # the last memory token predicts "a"
    assert t.topk_idx[0, :, 0].tolist() == row[3:7].tolist() and np.all(t.topk_logprobs[0, :, 0] == 0)


def _config(**method):
    path = ROOT / "configs" / "experiments.py"
    spec = importlib.util.spec_from_file_location("configs_experiments", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.method.update(method)
    c.optim.lr = c.method.lr_by_method[c.method.name]
    return c


@pytest.mark.slow  # tiny model, but the shared loop compiles a step: ~1 min on 2 shared cores
def test_consolidating_a_fact_lowers_the_answer_perplexity_without_the_context(tiny_llama, char_tok):
    cfg, params = tiny_llama
    c = _config(objective="causal_language_model", topk=8)
    c.optim.lr = 1e-2
    c.train.num_steps = 20
    fmt = se.RawFormat.for_model(char_tok, cfg)
    spec = se.spec_from_config(c)
    context, answer = "xqzv is kpwj", se.encode(char_tok, " kpwj")
    prompt = se.plain_ids(char_tok, cfg, fmt, "") + se.encode(char_tok, "xqzv is")
    before = se.answer_perplexity(se.row_logits(params, None, cfg, prompt + answer), len(prompt), answer)
    sp, sa = se.consolidate_raw(params, cfg, char_tok, fmt, context, [""], spec, c)
    after = se.answer_perplexity(se.row_logits(sp, sa, cfg, prompt + answer), len(prompt), answer)
    assert after < 0.5 * before
    assert jax.tree.leaves(sp)[0].shape == jax.tree.leaves(params)[0].shape  # LoRA merged into the weights


def test_probes_for_adds_sentence_prefixes_and_rejects_unknown_modes():
    c = _config()
    probes = se.probes_for(c, "The Bohr tower is in Topeka.")
    assert probes[: len(se.PROBES)] == list(se.PROBES) and probes[-1] == "The Bohr"
    c.context_probes = "none"
    assert se.probes_for(c, "The Bohr tower is in Topeka.") == list(se.PROBES)
    c.context_probes = "paragraphs"
    with pytest.raises(sm.ConsolidationError, match="context_probes"):
        se.probes_for(c, "x")
