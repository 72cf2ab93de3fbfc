"""Quick quality numbers before and after pruning: perplexity (causal LMs), accuracy (classifiers), and for bare
encoders the cosine similarity of mean-pooled sentence embeddings to the unpruned model's."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer: Any, texts: list[str], seq_len: int = 256, max_tokens: int = 4096,
               progress: bool = False) -> float:
    """Perplexity over the texts joined and cut into ``seq_len``-token windows (at most ``max_tokens``)."""
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    windows = [ids[i:i + seq_len] for i in range(0, len(ids) - 1, seq_len) if len(ids[i:i + seq_len]) > 1]
    nll, count = 0.0, 0
    model.eval()
    for w in tqdm(windows, desc="perplexity", disable=not progress):
        x = torch.tensor([w])
        out = model(input_ids=x, labels=x)
        nll += float(out.loss) * (len(w) - 1)
        count += len(w) - 1
    return math.exp(nll / max(count, 1))


def _batches(tokenizer: Any, texts: list[str], batch_size: int, max_length: int, progress: bool, desc: str) -> Iterator[Any]:
    for i in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress):
        yield tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")


@torch.no_grad()
def text_accuracy(model: nn.Module, tokenizer: Any, texts: list[str], labels: list[int], batch_size: int = 16,
                  max_length: int = 128, progress: bool = False) -> float:
    model.eval()
    preds: list[int] = []
    for batch in _batches(tokenizer, texts, batch_size, max_length, progress, "accuracy"):
        preds += model(**batch).logits.argmax(-1).tolist()
    return sum(int(p == int(y)) for p, y in zip(preds, labels)) / max(len(labels), 1)


@torch.no_grad()
def embeddings(model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 16, max_length: int = 128,
               progress: bool = False) -> torch.Tensor:
    """Mean-pooled last hidden states (the sentence-transformers embedding of MiniLM)."""
    model.eval()
    out = []
    for batch in _batches(tokenizer, texts, batch_size, max_length, progress, "embeddings"):
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a, b, dim=-1).mean())
