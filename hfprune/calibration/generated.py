"""Self-generated data: the model writes its own calibration (and recovery) text.

The data-agnostic idea of the expressiveness paper taken to language models: with no data, or data of one narrow
domain, the model's own samples cover what it knows. Williams & Aletras ("On the Impact of Calibration Data in
Post-training Quantization and Pruning", 2024) and Ji et al. ("Beware of Calibration Data for Pruning Large
Language Models", 2024) found self-generated calibration text competitive with real text; self-data distillation
(Thangarasa et al., 2024, arXiv 2410.09982) uses the teacher's own text for recovery.

Each sequence starts from the BOS token (EOS where there is none) and is sampled token by token with the KV cache
(temperature 1, nucleus 0.95: the model's distribution without its far tail, which small models loop on); the end
of sequence is suppressed until ``seq_len`` tokens (``min_new_tokens``), so every sequence is exactly that long.
Seeded: the same model, seed and sizes give the same tokens; under several processes rank 0 samples and the others
receive its tokens. Cached: the tokens are saved as safetensors under ``$HFPRUNE_CACHE`` (default
``~/.cache/hfprune``) keyed by a fingerprint of the weights and the settings, and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import CalibrationError
from ..utils.distributed import broadcast_object, is_main_process

TOP_P = 0.95
TEMPERATURE = 1.0
GENERATION_BATCH = 32


def cache_dir(kind: str = "generated") -> Path:
    """hfprune's cache folder for ``kind`` (generated calibration tokens, packaged lm-eval tasks), under
    ``$HFPRUNE_CACHE`` (default ``~/.cache/hfprune``)."""
    return Path(os.environ.get("HFPRUNE_CACHE", Path.home() / ".cache" / "hfprune")) / kind


def fingerprint(model: nn.Module, *settings: object) -> str:
    """A key for the weights and the settings (JSON values): the config, and a strided sample of every parameter's
    values."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    h.update((cfg.to_json_string(use_diff=False) if cfg is not None else type(model).__name__).encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    h.update(json.dumps(list(settings)).encode())
    return h.hexdigest()[:24]


def _start_token(model: nn.Module) -> int:
    cfg = model.config
    gen = getattr(model, "generation_config", None)
    for value in (getattr(cfg, "bos_token_id", None), getattr(gen, "bos_token_id", None),
                  getattr(cfg, "eos_token_id", None), getattr(gen, "eos_token_id", None)):
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    raise CalibrationError("Self-generated data start from the model's BOS (or EOS) token, and its config names "
                           "neither; set calibration.source='data' and pass calibration texts.")


@torch.no_grad()
def _sample(model: nn.Module, n: int, seq_len: int, seed: int) -> torch.Tensor:
    start = _start_token(model)
    device = next(model.parameters()).device
    out = []
    was = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's RNG stays
            torch.manual_seed(seed)
            for i in range(0, n, GENERATION_BATCH):
                b = min(GENERATION_BATCH, n - i)
                x = torch.full((b, 1), start, dtype=torch.long, device=device)
                ids = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, top_p=TOP_P, top_k=0,
                                     temperature=TEMPERATURE, max_new_tokens=seq_len - 1, min_new_tokens=seq_len - 1,
                                     pad_token_id=start, suppress_tokens=None)
                out.append(ids[:, :seq_len].cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def check_can_generate(model: nn.Module) -> None:
    """Raise `CalibrationError` unless ``model`` can write text from a start token (before any work)."""
    can = getattr(model, "can_generate", None)
    if not (callable(can) and can()) or not getattr(getattr(model, "config", None), "vocab_size", None):
        raise CalibrationError(f"Self-generated data need a generative language model; {type(model).__name__} "
                               "cannot generate. Set calibration.source='data' (recovery.generated_share: 0) and "
                               "pass data.")
    _start_token(model)


def generated_token_ids(model: nn.Module, num_samples: int, seq_len: int, seed: int = 0,
                        cache: bool = True) -> torch.Tensor:
    """``[num_samples, seq_len]`` token ids sampled from ``model`` (see the module), from the cache when there."""
    from safetensors.torch import load_file

    check_can_generate(model)
    path = cache_dir() / f"{fingerprint(model, num_samples, seq_len, seed, TOP_P, TEMPERATURE)}.safetensors"
    ids = None
    if is_main_process():
        if cache and path.is_file():
            ids = load_file(str(path))["input_ids"]
        else:
            ids = _sample(model, num_samples, seq_len, seed)
            if cache:
                save_cache_file({"input_ids": ids}, path)
    return broadcast_object(ids)  # every process calibrates / trains on rank 0's tokens


def save_cache_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """One safetensors cache entry, whole or not at all: a crash leaves no half-written entry (nor a temporary
    file). Shared by the generated tokens and the teacher cache."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
