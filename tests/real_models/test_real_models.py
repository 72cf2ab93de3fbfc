"""Real pretrained models shipped by pip packages: MiniLM (BERT) and SmolLM2 (Llama-style, GQA)."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from hfprune import PruningConfig, available_criteria, load_pruned, prune
from hfprune.examples import lee_texts, load_minilm, load_smollm2

pytestmark = pytest.mark.slow

# taylor needs a loss, which the headless MiniLM encoder has not; it runs on SmolLM2 below
STRUCTURED = ["magnitude", "random", "wanda", "expressiveness", "hybrid", "elimination_compensation",
              "relative_importance"]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


def _embed(model, tok, texts):
    batch = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=64)
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1)


def test_minilm_ffn_reloads_with_plain_automodel_then_heads_need_hfprune_loader(minilm, tmp_path):
    model, tok = load_minilm()
    texts = lee_texts("test")[:8]
    config = PruningConfig(criterion="wanda", granularity="neurons", sparsity=0.5,
                           calibration={"num_samples": 8, "seq_len": 128})
    result = prune(model, config, calibration_data=lee_texts(), tokenizer=tok, progress=False)
    assert result.model.config.intermediate_size == 768 and result.report.loader == "transformers"
    result.save_pretrained(tmp_path / "ffn", tokenizer=tok)
    plain = T.AutoModel.from_pretrained(tmp_path / "ffn")
    torch.testing.assert_close(_embed(plain, tok, texts), _embed(result.model, tok, texts), atol=1e-5, rtol=0)

    model, tok = load_minilm()
    config = PruningConfig(criterion="wanda", granularity="neurons+heads", sparsity=0.5, head_sparsity=1 / 3,
                           calibration={"num_samples": 8, "seq_len": 128})
    result = prune(model, config, calibration_data=lee_texts(), tokenizer=tok, progress=False)
    assert result.report.loader == "hfprune"
    assert result.model.encoder.layer[0].attention.self.num_attention_heads == 8
    result.save_pretrained(tmp_path / "heads", tokenizer=tok)
    reloaded = load_pruned(tmp_path / "heads")
    torch.testing.assert_close(_embed(reloaded, tok, texts), _embed(result.model, tok, texts), atol=1e-5, rtol=0)


def test_smollm2_kv_group_and_ffn_reload_with_plain_transformers_and_generate(smollm2, tmp_path):
    import copy

    model, tok = copy.deepcopy(smollm2[0]), smollm2[1]
    config = PruningConfig(criterion="wanda", granularity="neurons+heads", sparsity=0.3, head_sparsity=1 / 3,
                           calibration={"num_samples": 4, "seq_len": 128})
    result = prune(model, config, calibration_data=lee_texts(), tokenizer=tok, progress=False)
    cfg = result.model.config
    # 1,536 x 0.7 = 1,075 neurons, rounded up to a multiple of 128 (round_to="auto")
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (6, 2, 1152)
    assert result.report.loader == "transformers"
    result.save_pretrained(tmp_path / "smol", tokenizer=tok)
    plain = T.AutoModelForCausalLM.from_pretrained(tmp_path / "smol").eval()
    ids = tok("The prime minister said", return_tensors="pt")
    torch.testing.assert_close(plain(**ids).logits, result.model(**ids).logits, atol=1e-4, rtol=0)
    out = plain.generate(**ids, max_new_tokens=10, do_sample=False)
    text = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out.shape[1] == ids["input_ids"].shape[1] + 10 and text.strip()


@pytest.mark.parametrize("criterion", STRUCTURED)
def test_every_criterion_prunes_minilm_and_reloads(criterion, tmp_path):
    assert criterion in available_criteria()
    model, tok = load_minilm()
    options = {"output": "network"} if criterion == "elimination_compensation" else None
    config = PruningConfig(criterion=criterion, granularity="neurons", sparsity=0.3, options=options,
                           calibration={"num_samples": 4, "seq_len": 64})
    result = prune(model, config, calibration_data=lee_texts(), tokenizer=tok, progress=False)
    result.save_pretrained(tmp_path / criterion)
    reloaded = T.AutoModel.from_pretrained(tmp_path / criterion)
    x = tok(["a short sentence"], return_tensors="pt")
    torch.testing.assert_close(reloaded(**x).last_hidden_state, result.model(**x).last_hidden_state, atol=1e-4,
                               rtol=0)


@pytest.mark.parametrize("criterion, granularity", [
    ("magnitude", "weights"), ("wanda", "2:4"), ("taylor", "neurons"), ("expressiveness", "neurons"),
    ("hybrid", "neurons"), ("elimination_compensation", "weights"), ("elimination_compensation", "neurons"),
    ("relative_importance", "weights"), ("random", "neurons"),
])
def test_every_criterion_prunes_smollm2_and_reloads(smollm2, criterion, granularity, tmp_path):
    import copy

    model, tok = copy.deepcopy(smollm2[0]), smollm2[1]
    config = PruningConfig(criterion=criterion, granularity=granularity, sparsity=0.3,
                           options={"output": "layer" if granularity == "weights" else "network"}
                           if criterion == "elimination_compensation" else None,
                           calibration={"num_samples": 2, "seq_len": 64, "batch_size": 2})
    result = prune(model, config, calibration_data=lee_texts(), tokenizer=tok, progress=False)
    result.save_pretrained(tmp_path / "m")
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = tok("Sydney is", return_tensors="pt")
    torch.testing.assert_close(reloaded(**ids).logits, result.model(**ids).logits, atol=1e-4, rtol=0)
