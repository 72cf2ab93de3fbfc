"""Calibration (and evaluation) data checked against the model before any forward pass."""

from __future__ import annotations


import pytest
import torch

from tests.helpers.models import tiny_model, word_texts
from hfprune import CalibrationError, ConfigError, PruningConfig, prune
from hfprune.calibration.data import prepare_calibration
from tests.helpers.checks import forward_calls


@pytest.mark.parametrize("family, data, words", [
    ("llama", torch.full((4, 12), 150), "outside the model's embedding of 100"),
    ("llama", torch.full((4, 12), -1), "outside the model's embedding"),
    ("llama", torch.randn(4, 12), "float tensor (images)"),
    ("llama", torch.zeros(4, 12, dtype=torch.bool), "dtype torch.bool"),
    ("vit", torch.randint(0, 100, (4, 12)), "takes images"),
    ("vit", torch.randn(4, 3, 32, 32), "32x32 pixels; the model takes 16x16"),
    ("vit", torch.randn(4, 1, 16, 16), "takes [images, 3, height, width]"),
    ("vit", torch.full((4, 3, 16, 16), float("nan")), "NaN or inf"),
    ("bert", torch.randint(0, 100, (2, 600)), "600 tokens, more than the 512 positions"),
    ("llama", [{"input_ids": torch.tensor([1, 2])}, {"labels": torch.tensor([1])}], "the same keys"),
    ("llama", [{"input_ids": torch.tensor([1, 2])}, {"input_ids": "abc"}], "row 1"),
])
def test_bad_calibration_data_is_refused_before_any_forward(family, data, words):
    model = tiny_model(family)
    calls = forward_calls(model)
    config = PruningConfig(criterion="wanda", calibration={"num_samples": 4, "seq_len": 12, "batch_size": 2})
    with pytest.raises(CalibrationError) as info:
        prune(model, config, calibration_data=data, progress=False)
    assert words in str(info.value), str(info.value)
    assert calls[0] == 0


def test_other_batch_keys():
    from hfprune.calibration.checks import check_batch

    plain = torch.nn.Linear(3, 2)
    check_batch({"x": torch.randn(2, 3), "labels": torch.zeros(2)}, plain)  # a plain module's own argument names
    with pytest.raises(CalibrationError, match="calibration x hold NaN"):
        check_batch({"x": torch.full((2, 3), float("nan"))}, plain)
    with pytest.raises(CalibrationError, match="takes 'input_ids'"):
        check_batch({"foo": torch.randn(2, 3)}, tiny_model("bert"))


def test_tokenizer_larger_than_the_embedding_is_named():
    class BigTokenizer:
        eos_token_id, sep_token_id, pad_token_id = 0, None, 0

        def __len__(self) -> int:
            return 300

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [250 + (i % 40) for i in range(len(text.split()))]}

    config = PruningConfig(criterion="wanda", calibration={"num_samples": 2, "seq_len": 8, "batch_size": 2})
    with pytest.raises(CalibrationError, match="tokenizer has 300 tokens"):
        prepare_calibration(word_texts(10), tiny_model("llama"), config, tokenizer=BigTokenizer())


def test_calibration_longer_than_the_positions():
    config = PruningConfig(criterion="wanda", calibration={"source": "random", "num_samples": 2, "seq_len": 600})
    with pytest.raises(ConfigError, match="seq_len=600 .* 512 positions"):  # before building any sequence
        prepare_calibration("random", tiny_model("bert"), config)
    with pytest.raises(CalibrationError, match="600 tokens, more than the 512 positions"):  # given as tensors
        prepare_calibration(torch.randint(0, 100, (2, 600)), tiny_model("bert"), PruningConfig(criterion="wanda"))


def test_tokenized_rows_are_padded_into_batches():
    torch.manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 100, (n,))} for n in (5, 9, 7, 9)]
    config = PruningConfig(criterion="wanda", granularity="neurons",
                           calibration={"num_samples": 4, "seq_len": 9, "batch_size": 2})
    calib = prepare_calibration(rows, tiny_model("llama"), config)
    first = calib.batches[0]
    assert first["input_ids"].shape == (2, 9) and first["attention_mask"].tolist()[0] == [1] * 5 + [0] * 4
    assert calib.num_samples == 4 and calib.tokens == 5 + 9 + 7 + 9
    lists = [{"input_ids": r["input_ids"].tolist()} for r in rows]  # a tokenized `datasets` row holds lists
    result = prune(tiny_model("llama"), config, calibration_data=lists, progress=False)
    assert result.report.params_after < result.report.params_before


def test_ragged_tokenized_dataset_is_padded():
    import datasets

    rows = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8]]})
    config = PruningConfig(criterion="wanda", calibration={"num_samples": 2, "seq_len": 5, "batch_size": 2})
    calib = prepare_calibration(rows, tiny_model("llama"), config)
    assert calib.batches[0]["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
