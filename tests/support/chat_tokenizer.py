"""A tiny offline chat tokenizer for method tests."""


class CharChatTokenizer:
    """A tiny offline chat tokenizer for method tests: one id per character (ids 3..), ChatML-like turns.

    Ids: 1 = start of a turn (plays BOS), 2 = end of a turn (EOS), 0 = pad.
    """

    chat_template = "chatml-like"
    pad_token_id, eos_token_id, bos_token_id = 0, 2, 1

    def __init__(self, vocab_size: int = 101):
        self.vocab_size = vocab_size

    def _enc(self, text):
        out, i = [], 0
        while i < len(text):
            for tag, tid in (("<s>", 1), ("</s>", 2)):
                if text.startswith(tag, i):
                    out.append(tid)
                    i += len(tag)
                    break
            else:
                out.append(3 + ord(text[i]) % (self.vocab_size - 3))
                i += 1
        return out

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        if messages[0]["role"] != "system":
            messages = [{"role": "system", "content": "default"}] + messages
        text = "".join(f"<s>{m['role']}\n{m['content']}</s>\n" for m in messages)
        return text + ("<s>assistant\n" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self._enc(text)}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + (i - 3) % 26) for i in ids if not (skip_special_tokens and i < 3))
