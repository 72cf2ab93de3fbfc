"""Tiny random-weight models of every supported family, built from configs (no Hub access)."""

from __future__ import annotations

import os

import huggingface_hub.constants as hub_constants
import pytest
import torch
import transformers as T
from transformers.utils import hub as transformers_hub

from hub_server import HubServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
T.logging.set_verbosity_error()

#: the token the loopback Hub accepts (tests check it never reaches files or logs)
HUB_TOKEN = "hf_loopbackSecretToken0123456789"


def _llama(**kw):
    return T.LlamaConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                         intermediate_size=64, vocab_size=100, head_dim=8, **kw)


FAMILIES = {
    "bert": (lambda: T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=100), T.AutoModelForSequenceClassification),
    "roberta": (lambda: T.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, vocab_size=100), T.AutoModel),
    "gpt2": (lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0),
             T.AutoModelForCausalLM),
    "llama": (_llama, T.AutoModelForCausalLM),
    "qwen2": (lambda: T.Qwen2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                                    num_key_value_heads=3, intermediate_size=64, vocab_size=100),
              T.AutoModelForCausalLM),
    "mistral": (lambda: T.MistralConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                                        num_key_value_heads=3, intermediate_size=64, vocab_size=100, head_dim=8),
                T.AutoModelForCausalLM),
    "vit": (lambda: T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                image_size=16, patch_size=8, num_labels=3), T.AutoModelForImageClassification),
}


def tiny_model(family: str):
    make_config, auto = FAMILIES[family]
    torch.manual_seed(0)
    return auto.from_config(make_config()).eval()


def model_inputs(family: str, n: int = 2):
    g = torch.Generator().manual_seed(1)
    if family == "vit":
        return {"pixel_values": torch.randn(n, 3, 16, 16, generator=g)}
    return {"input_ids": torch.randint(0, 100, (n, 12), generator=g)}


def calibration(family: str, n: int = 8):
    g = torch.Generator().manual_seed(2)
    if family == "vit":
        return torch.randn(n, 3, 16, 16, generator=g)
    return torch.randint(0, 100, (n, 12), generator=g)


def output_tensor(out) -> torch.Tensor:
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    return out


@pytest.fixture
def tmp_out(tmp_path):
    return tmp_path / "out"


def forward_statistics(criterion, layer, batches: list[torch.Tensor]) -> dict:
    """A forward-only criterion's statistics for one layer over ``batches`` of its inputs (no model, no hooks)."""
    stats = criterion.init_stats(layer)
    for xb in batches:
        criterion.accumulate(layer, stats, xb)
    return stats


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running loopback Hub; huggingface_hub's reading side (from_pretrained) pointed at it.

    The endpoint constants are read at import time, so they are patched rather than set through HF_ENDPOINT; the
    download cache and the agent-registry cache are moved to temporary paths so the user's HF_HOME is not touched.
    """
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"), raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with HubServer(token=HUB_TOKEN) as server:
        monkeypatch.setattr(hub_constants, "ENDPOINT", server.url)
        monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(transformers_hub, "_hf_api", None)  # transformers' shared HfApi keeps its endpoint
        yield server
