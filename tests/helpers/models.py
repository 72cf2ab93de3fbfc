"""Tiny random-weight models of every supported family, built from configs (no Hub access), and their inputs."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T


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


def generating_llama():
    """The tiny Llama with a BOS token, so it can write self-generated data."""
    m = tiny_model("llama")
    m.config.bos_token_id = 1
    return m


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


def forward_statistics(criterion, layer, batches: list[torch.Tensor]) -> dict:
    """A forward-only criterion's statistics for one layer over ``batches`` of its inputs (no model, no hooks)."""
    stats = criterion.init_stats(layer)
    for xb in batches:
        criterion.accumulate(layer, stats, xb)
    return stats


WORDS = ("the a cat dog sat ran on under mat log and then it was big small red blue house tree park saw "
         "ate fish bird flew over").split()


def word_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` seeded sentences of twelve words from `WORDS`."""
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (12,), generator=g).tolist()) for _ in range(n)]


def save_tiny_llama(path: Path, max_positions: int = 128) -> Path:
    """A random-weight LlamaForCausalLM with a word-level tokenizer over `WORDS`, saved like a Hub checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=max_positions)
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path
