"""The one perplexity of hfprune: the CLI's ``--evaluate``, ``hfprune evaluate`` and every benchmark script use it,
so their numbers compare.

Protocol (`PerplexityProtocol`, stated in every report that carries a perplexity): the texts are tokenized without
special tokens, joined with the tokenizer's EOS token between them (when it has one), cut to at most
``max_tokens`` tokens, and scored in non-overlapping windows of ``seq_len`` tokens (capped at the model's
positions); each window predicts its tokens after the first (``seq_len - 1`` per window), and the perplexity is
``exp`` of the mean negative log-likelihood over every predicted token. A last window shorter than ``seq_len`` is
scored too (dropping it would ignore up to ``seq_len - 1`` tokens of a short evaluation text). This is the
WikiText-style fixed-window protocol of the pruning papers (stride = window; the papers use 2048 on WikiText-2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration.checks import check_token_ids, max_positions
from ..errors import EvaluationError


@dataclass(frozen=True)
class PerplexityProtocol:
    """How a perplexity was measured (recorded next to it)."""

    seq_len: int = 512  # window length (capped at the model's positions)
    max_tokens: int | None = None  # token budget over the joined texts (None: all)
    eos_between_texts: bool = True  # the tokenizer's EOS between texts, so no window runs two texts together

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stride": self.seq_len, "windows": "non-overlapping"}


@dataclass(frozen=True)
class Perplexity:
    """A perplexity, the number of tokens it predicted and the protocol (window actually used)."""

    value: float
    tokens: int
    protocol: PerplexityProtocol

    def to_dict(self) -> dict[str, Any]:
        return {"perplexity": self.value, "tokens": self.tokens, **self.protocol.to_dict()}


def token_stream(tokenizer: Any, texts: list[str], protocol: PerplexityProtocol) -> list[int]:
    """The texts as one token list: EOS between texts (when asked and the tokenizer has one), cut to the budget."""
    eos = getattr(tokenizer, "eos_token_id", None) if protocol.eos_between_texts else None
    ids: list[int] = []
    for t in texts:
        piece = tokenizer(t, add_special_tokens=False)["input_ids"]
        if ids and piece and eos is not None:
            ids.append(eos)
        ids += piece
        if protocol.max_tokens and len(ids) >= protocol.max_tokens:
            break
    return ids[: protocol.max_tokens] if protocol.max_tokens else ids


@torch.no_grad()
def measure_perplexity(model: nn.Module, tokenizer: Any, texts: list[str],
                       protocol: PerplexityProtocol = PerplexityProtocol(), progress: bool = False) -> Perplexity:
    """Perplexity of ``model`` on ``texts`` by ``protocol`` (module docstring). Raises `EvaluationError` when there
    is nothing to predict (a perplexity of 1.0 from zero tokens would read as a perfect model) and when the loss is
    NaN."""
    ids = token_stream(tokenizer, texts, protocol)
    if len(ids) < 2:
        raise EvaluationError(f"The evaluation data holds {len(ids)} token(s) from {len(texts)} text(s); perplexity "
                              "needs at least two tokens. Pass more (non-blank) evaluation text or a larger "
                              "--max-samples.")
    seq_len = min(protocol.seq_len, max_positions(model) or protocol.seq_len)
    windows = [ids[i:i + seq_len] for i in range(0, len(ids) - 1, seq_len) if len(ids[i:i + seq_len]) > 1]
    check_token_ids(torch.tensor(ids).view(-1, 1), model, tokenizer, evaluation=True)  # every id in range
    check_token_ids(torch.tensor([windows[0]]), model, tokenizer, evaluation=True)  # window length
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    model.eval()
    for w in tqdm(windows, desc="perplexity", disable=not progress):
        x = torch.tensor([w], device=device)
        out = model(input_ids=x, labels=x)
        nll += float(out.loss) * (len(w) - 1)
        count += len(w) - 1
    if math.isnan(nll):
        raise EvaluationError("The model's loss on the evaluation text is NaN; the pruned model is broken: prune "
                              "less, or check the weights.")
    used = PerplexityProtocol(seq_len, protocol.max_tokens, protocol.eos_between_texts)
    return Perplexity(math.exp(min(nll / count, 709.0)), count, used)  # past e^709 a float overflows


def perplexity(model: nn.Module, tokenizer: Any, texts: list[str], seq_len: int = 512, max_tokens: int | None = None,
               progress: bool = False) -> float:
    """`measure_perplexity`'s value with the default protocol at ``seq_len`` and ``max_tokens``."""
    return measure_perplexity(model, tokenizer, texts, PerplexityProtocol(seq_len, max_tokens), progress).value
