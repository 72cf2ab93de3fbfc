"""Self-generated calibration data: seeded, cached, exactly sized; 'generated' needs no data, 'mixed' adds it to
the data given at the stated share; options without effect and models that cannot generate are refused."""

from __future__ import annotations

import pytest
import torch

import hfprune
from hfprune import PruningConfig
from hfprune.calibration import generated
from hfprune.errors import CalibrationError, ConfigError
from tests.helpers.models import generating_llama, tiny_model, word_texts


def test_seeded_and_exact_size():
    m = generating_llama()
    a = generated.generated_token_ids(m, 5, 16, seed=3, cache=False)
    b = generated.generated_token_ids(m, 5, 16, seed=3, cache=False)
    c = generated.generated_token_ids(m, 5, 16, seed=4, cache=False)
    assert a.shape == (5, 16) and (a[:, 0] == 1).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.max()) < m.config.vocab_size


def test_cached_by_weights_and_settings(generated_cache, monkeypatch):
    m = generating_llama()
    a = generated.generated_token_ids(m, 3, 8, seed=0)
    files = list((generated_cache / "generated").glob("*.safetensors"))
    assert files
    monkeypatch.setattr(generated, "_sample", lambda *a, **k: pytest.fail("sampled again instead of the cache"))
    assert torch.equal(generated.generated_token_ids(m, 3, 8, seed=0), a)
    with torch.no_grad():  # other weights: another key, so sampling is asked for again
        m.lm_head.weight.mul_(2)
    with pytest.raises(pytest.fail.Exception):
        generated.generated_token_ids(m, 3, 8, seed=0)


def _cfg(**calibration):
    return PruningConfig(criterion="wanda", granularity="neurons", sparsity=0.25,
                         calibration={"num_samples": 8, "seq_len": 12, "batch_size": 4, **calibration})


def test_generated_source_needs_no_data():
    res = hfprune.prune(generating_llama(), _cfg(source="generated"), None, progress=False)
    cal = res.report.calibration
    assert cal["source"] == "generated" and cal["num_samples"] == 8 and cal["tokens"] == 8 * 12


def test_mixed_source_at_the_stated_share(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    res = hfprune.prune(model, _cfg(source="mixed", generated_share=0.25), word_texts(40), tokenizer=tok,
                        progress=False)
    cal = res.report.calibration
    assert cal["source"] == "mixed" and cal["num_samples"] == 8 and cal["tokens"] == 8 * 12
    assert "self-generated" in cal["name"]
    from hfprune.calibration.data import prepare_calibration

    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama)
    batches = prepare_calibration(word_texts(40), fresh, res.config, tok).batches
    rows = torch.cat([b["input_ids"] for b in batches])
    made = generated.generated_token_ids(fresh, 2, 12, seed=res.config.seed)  # 25% of 8, from the cache
    where = [i for i, r in enumerate(rows) if any(torch.equal(r, g) for g in made)]
    assert len(where) == 2  # exactly the generated share
    assert where[0] < len(rows) - 2  # interleaved with the data, not appended after it


def test_bad_generated_settings_refused():
    with pytest.raises(ConfigError, match="generated_share.*source='mixed'"):
        _cfg(generated_share=0.3).validate()
    with pytest.raises(ConfigError, match="generated_share"):
        _cfg(source="mixed", generated_share=1.0).validate()
    with pytest.raises(CalibrationError, match="cannot generate"):
        generated.generated_token_ids(tiny_model("bert"), 2, 8, cache=False)


def test_start_token_falls_back_to_eos_and_is_required():
    m = generating_llama()
    m.config.bos_token_id = None
    m.generation_config.bos_token_id = None
    m.config.eos_token_id = m.generation_config.eos_token_id = 2
    assert (generated.generated_token_ids(m, 1, 4, cache=False)[:, 0] == 2).all()
    m.config.eos_token_id = m.generation_config.eos_token_id = None
    with pytest.raises(CalibrationError, match="BOS"):
        generated.generated_token_ids(m, 1, 4, cache=False)


def test_generated_source_refuses_data_it_would_ignore():
    with pytest.raises(CalibrationError, match="source='mixed'"):
        hfprune.prune(generating_llama(), _cfg(source="generated"), torch.randint(0, 100, (8, 12)), progress=False)
