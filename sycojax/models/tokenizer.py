"""Tokenizers from the same sources as the weights, offline, with the model's chat template.

    tok = load_tokenizer("smollm2-135m-instruct")       # or a HF dir, or a .gguf file
    text = chat_prompt(tok, "What is the capital of France?")
    ids = chat_ids(tok, "What is the capital of France?")  # == tok(text, add_special_tokens=False)

A GGUF file carries its tokenizer in the metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`);
transformers builds a fast tokenizer from it (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`),
which takes ~9 s for SmolLM2's 49k-token BPE. The result is saved once under
`<cache_dir>/tokenizers/<name>-<key>/` (same fingerprint key as the weights cache) and reloaded from
there in well under a second. Everything is loaded with `local_files_only=True`: nothing is downloaded.

The tokenizer comes back with `padding_side="left"` (batched generation appends on the right) and
`pad_token = eos_token` when the model defines no pad token.

**System prompts.** `chat_prompt(tok, user)` (system=None) renders the model's own template as is:
SmolLM2's template then inserts its default system turn ("You are a helpful AI assistant named
SmolLM, trained by Hugging Face"), as transformers and llama.cpp do; parity with them needs that.
`system=""` sends an explicit empty system turn (`<|im_start|>system\\n<|im_end|>`), which is how a
caller asks for no system prompt at all; any other string replaces the default.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from sycojax.models.convert import LoadError
from sycojax.models.loading import default_cache_dir, fingerprint, fingerprint_key, resolve_source


def load_tokenizer(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None):
    """A transformers fast tokenizer for a known name, a `.gguf` file or a HF directory (offline)."""
    src = resolve_source(name_or_path)
    if src.format == "gguf":
        cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        saved = cdir / "tokenizers" / f"{src.slug}-{fingerprint_key(fingerprint(src.files))}"
        tok = None
        if saved.is_dir():
            try:
                tok = _load_saved(saved)
            except Exception:  # a damaged cache entry: rebuild it below
                tok = None
        if tok is None:
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(
                    str(src.path.parent), gguf_file=src.path.name, local_files_only=True
                )
            except Exception as e:
                raise LoadError(
                    f"cannot build a tokenizer from the GGUF metadata of {src.path} ({type(e).__name__}: {e})."
                ) from None
            if tok.chat_template is None:
                tok.chat_template = _gguf_chat_template(src.path)
            _save_atomic(tok, saved)
    else:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(src.path), local_files_only=True)
        except Exception as e:
            raise LoadError(
                f"{src.path}: no usable tokenizer ({type(e).__name__}: {e}). A HF model directory needs its "
                "tokenizer files (tokenizer.json / tokenizer_config.json): copy them from the original model, "
                "or save them with tokenizer.save_pretrained(DIR)."
            ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def _load_saved(path: Path):
    """Our cached copy of a GGUF's tokenizer, loaded by the class its config names.

    Not through `AutoTokenizer`: importing that imports PyTorch (about 300 MB of resident memory in a
    JAX process that never uses it). Other classes still go through `AutoTokenizer`.
    """
    import transformers

    with open(path / "tokenizer_config.json", encoding="utf-8") as f:
        name = json.load(f).get("tokenizer_class", "")
    if name in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        cls = getattr(transformers, name)
    else:
        from transformers import AutoTokenizer as cls
    return cls.from_pretrained(str(path), local_files_only=True)


def _gguf_chat_template(path: Path) -> str | None:
    import gguf

    f = gguf.GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    return None if f is None else f.contents()


def _save_atomic(tok, saved: Path) -> None:
    """Save the tokenizer to `saved` via a temporary sibling dir + rename; a failure only costs speed."""
    tmp = saved.with_name(f"{saved.name}.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tok.save_pretrained(str(tmp))
        shutil.rmtree(saved, ignore_errors=True)
        os.replace(tmp, saved)
    except OSError:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp, ignore_errors=True)


def chat_messages(
    user: str, system: str | None = None, history: Sequence[Mapping[str, str]] | None = None
) -> list[dict[str, str]]:
    """`[system?] + history + [user]` as chat-template messages.

    history: earlier turns as `{"role": "user"|"assistant", "content": ...}` dicts, oldest first.
    system:  None = the template's default behaviour; a string (even "") = an explicit system turn.
    """
    msgs = [] if system is None else [{"role": "system", "content": system}]
    for m in history or ():
        if m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str):
            raise ValueError(f"history entries must be {{'role': 'user'|'assistant', 'content': str}}, got {m!r}")
        msgs.append({"role": m["role"], "content": m["content"]})
    msgs.append({"role": "user", "content": user})
    return msgs


def chat_prompt(tok, user: str, system: str | None = None, history: Sequence[Mapping[str, str]] | None = None) -> str:
    """The model's chat template applied to the conversation, ending with the assistant cue.

    The string already holds every special token: encode it with `add_special_tokens=False`
    (or use `chat_ids`). See the module docstring for what `system=None` vs `system=""` does.
    """
    if not tok.chat_template:
        raise ValueError("this tokenizer has no chat template; prompt the model with plain text instead.")
    return tok.apply_chat_template(chat_messages(user, system, history), tokenize=False, add_generation_prompt=True)


def chat_ids(
    tok, user: str, system: str | None = None, history: Sequence[Mapping[str, str]] | None = None
) -> list[int]:
    """Token ids of `chat_prompt(...)`, without a second BOS."""
    return tok(chat_prompt(tok, user, system, history), add_special_tokens=False)["input_ids"]
