"""Adapter trees kept apart from the frozen base: LoRA, memory tokens (and later memory modules)."""

from sycojax.adapters.lora import LoraConfig, init_lora, merge_lora, resolve_targets
from sycojax.adapters.memory import init_memory, insert_after_bos, memory_ids

__all__ = ["LoraConfig", "init_lora", "init_memory", "insert_after_bos", "memory_ids", "merge_lora", "resolve_targets"]
