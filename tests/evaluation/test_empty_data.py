"""Evaluation refuses data with nothing to measure."""

from __future__ import annotations

import math

import pytest

from tests.helpers.models import tiny_model
from hfprune.cli import main
from hfprune.errors import EvaluationError
from tests.helpers.checks import one_line


def test_perplexity_and_accuracy_refuse_empty_data():
    from hfprune.evaluation.perplexity import perplexity
    from hfprune.evaluation.quality import text_accuracy

    class WordTokenizer:
        def __call__(self, text, add_special_tokens=False, **kw):
            return {"input_ids": [3 + len(w) for w in text.split()]}

    model = tiny_model("llama")
    for texts in ([], ["one"], ["", " "]):
        with pytest.raises(EvaluationError, match="at least two tokens"):
            perplexity(model, WordTokenizer(), texts)
    value = perplexity(model, WordTokenizer(), ["two words and more"])
    assert math.isfinite(value) and value > 1.0
    with pytest.raises(EvaluationError, match="0 text"):
        text_accuracy(tiny_model("bert"), WordTokenizer(), [], [])
    with pytest.raises(EvaluationError, match="not a class index"):
        text_accuracy(tiny_model("bert"), WordTokenizer(), ["a b"], [7])


def test_cli_evaluate_on_empty_data(pruned_dirs, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("cat\n")
    assert main(["evaluate", str(pruned_dirs / "uniform"), "--data", str(short), "--quiet"]) == 1
    one_line(capsys, "at least two tokens")
    with pytest.raises(SystemExit):
        from hfprune.cli.parser import build_parser

        build_parser().parse_args(["evaluate", str(pruned_dirs / "uniform"), "--max-samples", "0"])
    assert main(["evaluate", str(pruned_dirs / "uniform"), "--max-samples", "0"]) == 2
    capsys.readouterr()
