"""Adapter trees kept apart from the frozen base: LoRA, memory tokens (and later memory modules)."""

from sycojax.adapters.lora import LoraConfig, init_lora, lora_row, merge_lora, resolve_targets, stack_lora_rows
from sycojax.adapters.memory import init_memory, insert_after_bos, memory_ids

__all__ = ["LoraConfig", "init_lora", "init_memory", "insert_after_bos", "lora_row", "memory_ids", "merge_lora",
           "resolve_targets", "stack_lora_rows"]
