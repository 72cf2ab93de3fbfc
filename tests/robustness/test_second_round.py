"""The second battery of bad inputs (issue 21): each case fixed by a mechanism, one test per behaviour."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers as T

from hfprune import CalibrationError, CheckpointError, ConfigError, PruningConfig, TrainingError, prune
from hfprune.trainer import RecoveryConfig, RecoveryTrainer
from tests.helpers.checks import digest, forward_calls
from tests.helpers.models import calibration, tiny_model
from tests.trainer.test_recovery import pruned_pair, rows, targs


# --- 1. every model the run reads is finite, and so is every training loss -------------------------------------------
def test_a_teacher_with_a_nan_weight_is_refused_before_training(tmp_path):
    dense, result = pruned_pair()
    with torch.no_grad():
        dense.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="of the teacher holds NaN or inf"):
        RecoveryTrainer(args=targs(tmp_path), pruned=result, train_dataset=rows(), teacher=dense,
                        recovery=RecoveryConfig(distillation_weight=0.5))


def test_a_non_finite_training_loss_stops_training_before_the_weights_change(tmp_path):
    _, result = pruned_pair()
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    trainer = RecoveryTrainer(args=targs(tmp_path, max_steps=2), pruned=result, train_dataset=rows(),
                              recovery=RecoveryConfig())
    trainer.model.lm_head.register_forward_hook(lambda m, a, out: out * float("nan"))
    with pytest.raises(TrainingError, match="training loss is nan at step 1"):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in result.model.state_dict().items())


# --- 2. publishing runs the folder check of load and evaluate, before any upload --------------------------------------
def test_push_refuses_a_folder_whose_config_contradicts_its_weights(hub, pruned_dirs, tmp_path):
    import shutil

    from hfprune import push_to_hub

    folder = shutil.copytree(pruned_dirs / "uniform", tmp_path / "edited")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] * 2  # config edited back, weights still pruned
    (folder / "config.json").write_text(json.dumps(cfg))
    before = digest(folder)
    with pytest.raises(CheckpointError, match="config.json"):
        push_to_hub(folder, "me/edited", endpoint=hub.url)
    assert digest(folder) == before  # the local folder untouched
    assert hub.repos == {} and hub.requests == []  # refused before any request


# --- 4. every token-level key of a calibration row has one value per token -------------------------------------------
def test_a_short_attention_mask_in_a_row_is_refused_before_any_forward():
    model = tiny_model("llama")
    calls = forward_calls(model)
    data = [{"input_ids": torch.arange(16), "attention_mask": torch.ones(12, dtype=torch.long)}] * 2
    config = PruningConfig(criterion="wanda", calibration={"num_samples": 2, "seq_len": 16})
    with pytest.raises(CalibrationError, match="16 input_ids but attention_mask holds 12"):
        prune(model, config, calibration_data=data, progress=False)
    assert calls == [0]


# --- 5. no NaN reaches a report: the probe says why it was skipped --------------------------------------------------
def test_one_token_rows_skip_the_probe_with_a_stated_reason(tmp_path):
    data = [{"input_ids": torch.tensor([i + 3])} for i in range(8)]
    config = PruningConfig(criterion="wanda", granularity="neurons", sparsity=0.25,
                           calibration={"num_samples": 8, "batch_size": 4})
    result = prune(tiny_model("llama"), config, calibration_data=data, progress=False)
    assert "probe_perplexity" not in result.report.calibration
    assert any("probe was skipped" in w and "one token" in w for w in result.report.warnings)
    result.save_pretrained(tmp_path / "out")
    for name in ("pruning_report.json", "README.md"):
        text = (tmp_path / "out" / name).read_text()
        assert "NaN" not in text and "nan" not in text.replace("nano", "")
    json.loads((tmp_path / "out" / "pruning_report.json").read_text())  # strict JSON


# --- 7. what the shapes decide is decided before any forward pass ---------------------------------------------------
def test_an_unreachable_target_is_refused_before_any_forward():
    model = tiny_model("llama")
    calls = forward_calls(model)
    config = PruningConfig(criterion="wanda", granularity="hidden+neurons+layers", width_depth={"target_params": 10},
                           calibration={"num_samples": 8, "seq_len": 12, "batch_size": 4})
    with pytest.raises(ConfigError, match="target_params"):
        prune(model, config, calibration_data=calibration("llama"), progress=False)
    assert calls == [0]


# --- 8. errors name the option that needs what is missing -----------------------------------------------------------
@pytest.mark.parametrize("kwargs, named", [
    ({"criterion": "magnitude", "granularity": "neurons", "protection": {"mode": "energy"}},
     "protection.mode='energy' needs calibration data"),
    ({"criterion": "magnitude", "reconstruction": {"method": "weights"}},
     "reconstruction.method='weights' needs calibration data"),
    ({"criterion": "wanda"}, "criterion 'wanda' needs calibration data"),
])
def test_missing_data_is_blamed_on_the_option_that_needs_it(kwargs, named):
    with pytest.raises(CalibrationError, match=named):
        prune(tiny_model("llama"), PruningConfig(**kwargs), progress=False)


# --- 3. protection is a promise: the report says the sparsity it reached ----------------------------------------------
def test_protection_beyond_the_sparsity_keeps_every_protected_unit_and_says_so():
    config = PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.9,
                           protection={"mode": "energy", "threshold": 1.0001}, reconstruction={"method": "none"},
                           calibration={"num_samples": 8, "seq_len": 12, "batch_size": 4})
    result = prune(tiny_model("llama"), config, calibration_data=calibration("llama"), progress=False)
    report = result.report
    for layer in report.layers:
        protected = report.protected[layer.name]
        assert len(protected) > round(0.1 * layer.total)  # more than the sparsity leaves
        assert layer.kept == len(protected)  # every protected unit kept
        assert all(bool(result.masks[layer.name][i]) for i in protected)
    warnings = [w for w in report.warnings if "protection" in w and "lower sparsity" in w]
    assert len(warnings) == len(report.layers)


# --- 6. defaults adapt to the model and the data; an explicit value that does not fit is still an error --------------
FIVE = ["The cat sat on the mat.", "Stocks fell sharply on Monday.", "A storm is coming from the west.",
        "She read the report twice.", "The museum opens at nine."]


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_minilm_with_five_sentences_runs_with_defaults_and_says_how_it_calibrated(criterion):
    from hfprune.examples import load_minilm

    model, tok = load_minilm()
    result = prune(model, PruningConfig(criterion=criterion, granularity="neurons", sparsity=0.3),
                   calibration_data=FIVE, tokenizer=tok, progress=False)
    cal = result.report.calibration
    assert cal["layout"] == "padded rows" and cal["num_samples"] == 5 and 5 < cal["tokens"] < 100
    assert any("padded rows" in w for w in result.report.warnings)
    assert result.config.calibration.seq_len == 512  # "auto" settled against MiniLM's 512 positions, and saved
    assert result.report.params_after < result.report.params_before


def test_a_short_position_table_settles_auto_and_refuses_an_explicit_length():
    bert = T.BertForSequenceClassification(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                        intermediate_size=64, vocab_size=100,
                                                        max_position_embeddings=128)).eval()
    config = PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5,
                           calibration={"source": "random", "num_samples": 4})
    result = prune(copy.deepcopy(bert), config, progress=False)
    assert result.config.calibration.seq_len == 128
    with pytest.raises(ConfigError, match="calibration.seq_len=256 is longer than the 128 positions"):
        prune(bert, PruningConfig(criterion="wanda", calibration={"seq_len": 256}), calibration_data=["a b c"] * 3,
              tokenizer=None, progress=False)


@pytest.mark.parametrize("data, tokenizer, words", [
    (["   ", ""], "tok", "no non-blank text"),
    (["some words here"], None, "need a tokenizer"),
])
def test_on_a_short_position_table_data_problems_are_named_not_hidden_behind_seq_len(data, tokenizer, words):
    from tests.helpers.models import WORDS

    bert = T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    vocab_size=len(WORDS) + 3, max_position_embeddings=128)).eval()
    tok = None
    if tokenizer:
        from tokenizers import Tokenizer, models, pre_tokenizers

        raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *WORDS])},
                                         unk_token="<unk>"))
        raw.pre_tokenizer = pre_tokenizers.Whitespace()
        tok = T.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>", pad_token="</s>")
    with pytest.raises(CalibrationError, match=words):
        prune(bert, PruningConfig(criterion="wanda", granularity="neurons"), calibration_data=data, tokenizer=tok,
              progress=False)
