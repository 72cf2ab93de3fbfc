"""Token budgets: training rows measured in tokens, a budget turned into optimizer steps, texts packed into rows."""

from __future__ import annotations

import math
from typing import Any

from ...errors import ConfigError


def tokens_per_row(dataset: Any, sample: int = 1000) -> float:
    """Mean non-padding tokens per training row (the first ``sample`` rows), from attention_mask or input_ids."""
    if dataset is None or not hasattr(dataset, "__len__") or len(dataset) == 0:
        raise ConfigError("RecoveryConfig.max_tokens needs a map-style train_dataset with rows of input_ids, to "
                          "convert the token budget into optimizer steps.")
    n = min(sample, len(dataset))
    total = 0
    for i in range(n):
        row = dataset[i]
        if not isinstance(row, dict) or "input_ids" not in row:
            raise ConfigError("RecoveryConfig.max_tokens needs training rows with 'input_ids' (tokenized text).")
        mask = row.get("attention_mask")
        total += int(sum(mask)) if mask is not None else len(row["input_ids"])
    return total / n


def steps_for_tokens(max_tokens: int, per_row: float, args: Any) -> int:
    """Optimizer steps that consume ``max_tokens`` (rounded up): tokens per step = rows per step x tokens per row."""
    rows = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    return max(1, math.ceil(max_tokens / (rows * per_row)))


def pack_texts(tokenizer: Any, texts: list[str], seq_len: int, max_tokens: int | None = None) -> list[dict[str, list[int]]]:
    """Causal-LM training rows: the texts joined with EOS and cut into ``seq_len``-token rows (labels = input ids;
    the model shifts them); the incomplete tail is dropped."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if max_tokens and len(ids) >= max_tokens:
            break
    if max_tokens:
        ids = ids[:max_tokens]
    n = len(ids) // seq_len
    if n == 0:
        raise ConfigError(f"The recovery text holds {len(ids)} tokens, fewer than one row of seq_len={seq_len}; "
                          "pass more text or a smaller seq_len.")
    return [{"input_ids": ids[i * seq_len:(i + 1) * seq_len], "labels": ids[i * seq_len:(i + 1) * seq_len],
             "attention_mask": [1] * seq_len} for i in range(n)]
