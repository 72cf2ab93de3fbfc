"""Quality numbers before and after pruning besides perplexity (`hfprune.evaluation.perplexity`): accuracy
(classifiers), and for bare encoders the cosine similarity of mean-pooled sentence embeddings to the unpruned
model's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration.checks import check_token_ids, max_positions
from ..errors import EvaluationError


def _batches(model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int, max_length: int, progress: bool,
             desc: str) -> Iterator[Any]:
    """Tokenized batches, each checked against the model (ids in the embedding, length within the positions)."""
    max_length = min(max_length, max_positions(model) or max_length)
    for i in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress):
        batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        check_token_ids(batch["input_ids"], model, tokenizer, evaluation=True)
        yield batch


@torch.no_grad()
def text_accuracy(model: nn.Module, tokenizer: Any, texts: list[str], labels: list[int], batch_size: int = 16,
                  max_length: int = 128, progress: bool = False) -> float:
    if not texts or len(texts) != len(labels):
        raise EvaluationError(f"Accuracy needs labelled evaluation texts: got {len(texts)} text(s) and {len(labels)} "
                              "label(s). Pass a labelled CSV/JSONL file with at least one row.")
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    bad = [y for y in labels if not _is_label(y, num_labels)]
    if bad:
        raise EvaluationError(f"Evaluation label {bad[0]!r} is not a class index of the model "
                              f"(0..{(num_labels or 1) - 1}); "
                              "pass integer labels that match the classifier head.")
    model.eval()
    preds: list[int] = []
    for batch in _batches(model, tokenizer, texts, batch_size, max_length, progress, "accuracy"):
        preds += model(**batch).logits.argmax(-1).tolist()
    return sum(int(p == int(y)) for p, y in zip(preds, labels)) / len(labels)


def _is_label(y: Any, num_labels: int | None) -> bool:
    try:
        value = int(y)
    except (TypeError, ValueError):
        return False
    return value == y and 0 <= value < (num_labels or value + 1)


@torch.no_grad()
def embeddings(model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 16, max_length: int = 128,
               progress: bool = False) -> torch.Tensor:
    """Mean-pooled last hidden states (the sentence-transformers embedding of MiniLM)."""
    if not texts:
        raise EvaluationError("The evaluation data holds no text; pass at least one non-blank text.")
    model.eval()
    out = []
    for batch in _batches(model, tokenizer, texts, batch_size, max_length, progress, "embeddings"):
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a, b, dim=-1).mean())
