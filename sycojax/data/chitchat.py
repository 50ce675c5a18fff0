"""Chit-chat dialogs (from `chitchat-dataset`): 7,168 real human-human chats, the dialog set of sycojax.

File: `chitchat_dataset/dataset.json`, a dict `id -> {"messages", "prompt", "ratings", "start"}` where
`messages` is a list of turns and each turn a list of consecutive messages `{"text", "sender", ...}` by one
speaker. A turn becomes one string (its messages joined by "\n"); 4,017 chats have >= 2 turns, 2,731 have >= 8.
"""

from __future__ import annotations

import json
import os

from sycojax.data.sources import package_file, require_nonempty

CHITCHAT_PACKAGE = "chitchat_dataset"
CHITCHAT_FILE = "dataset.json"


def load_chitchat_dialogs(*, root: str | os.PathLike | None = None, min_turns: int = 2) -> list[dict]:
    """`{"id", "prompt", "turns": [str, ...]}` per chat with at least `min_turns` turns, in file order.

    Consecutive turns alternate speakers; adjacent turns by the same sender (none in 0.9.0) are merged.
    """
    path = package_file(CHITCHAT_PACKAGE, CHITCHAT_FILE, root)
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    dialogs = []
    for cid, chat in raw.items():
        turns, senders = [], []
        for group in chat.get("messages") or []:
            text = "\n".join(m["text"].strip() for m in group if (m.get("text") or "").strip())
            if not text:
                continue
            sender = group[0].get("sender")
            if senders and senders[-1] == sender:
                turns[-1] += "\n" + text
            else:
                turns.append(text)
                senders.append(sender)
        if len(turns) >= min_turns:
            dialogs.append({"id": cid, "prompt": chat.get("prompt") or "", "turns": turns})
    require_nonempty(dialogs, f"chitchat dialogs with >= {min_turns} turns in {path}")
    return dialogs
