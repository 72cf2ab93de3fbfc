"""lm-evaluation-harness tasks (hfprune.evaluation.harness): the packaged offline task runs on a pruned folder, its
accuracy equals an independent log-likelihood computation, results reach the report and the card's model-index."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import hfprune
from hfprune import PruningConfig
from hfprune.errors import EvaluationError
from hfprune.evaluation.harness import run_tasks
from hfprune.examples import POLARITY_TASK, polarity_sentences, polarity_task
from tests.helpers.models import save_tiny_llama

LIMIT = 6


def pruned_folder(tmp_path: Path) -> tuple[Path, Path]:
    base = save_tiny_llama(tmp_path / "base")
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    tok = transformers.AutoTokenizer.from_pretrained(base)
    res = hfprune.prune(model, PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5),
                        progress=False)
    out = tmp_path / "pruned"
    res.save_pretrained(out)
    tok.save_pretrained(out)
    return base, out


@torch.no_grad()
def reference_accuracy(model, tok, n: int) -> float:
    """Log-likelihood of each choice after the prompt, computed here from the definition (context and
    continuation encoded as lm-eval does: the continuation is what encoding the whole adds to the context)."""
    texts, labels = polarity_sentences()
    right = 0
    for text, label in list(zip(texts, labels))[:n]:
        context = f"Review: {text}\nSentiment:"
        lls = []
        for choice in (" negative", " positive"):
            ctx = tok(context, add_special_tokens=False)["input_ids"]
            whole = tok(context + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([whole])
            logp = model(ids[:, :-1]).logits.log_softmax(-1)[0]
            cont = whole[len(ctx):]
            lls.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        right += int(max(range(2), key=lambda i: (lls[i], -i)) == label)
    return right / n


def test_packaged_task_equals_an_independent_loglikelihood_count(tmp_path):
    base, _ = pruned_folder(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
    tok = transformers.AutoTokenizer.from_pretrained(base)
    out = run_tasks(model, tok, [POLARITY_TASK], polarity_task(str(tmp_path / "tasks")), limit=LIMIT)
    entry = out[POLARITY_TASK]
    assert entry["samples"] == LIMIT and entry["num_fewshot"] == 0
    assert entry["acc"] == pytest.approx(reference_accuracy(model, tok, LIMIT))


def test_evaluate_command_records_tasks_in_report_and_model_index(tmp_path):
    base, folder = pruned_folder(tmp_path)
    run = subprocess.run([sys.executable, "-m", "hfprune", "evaluate", str(folder), "--tasks", POLARITY_TASK,
                          "--limit", str(LIMIT), "--base", str(base)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"{POLARITY_TASK} acc:" in run.stdout and "unpruned" in run.stdout
    entry = json.loads((folder / "pruning_report.json").read_text())["evaluation"][f"{POLARITY_TASK}/acc"]
    assert 0 <= entry["after"] <= 1 and 0 <= entry["before"] <= 1
    assert entry["protocol"].startswith("lm-eval ") and f"{LIMIT} documents" in entry["protocol"]
    card = (folder / "README.md").read_text()
    assert "model-index" in card and f"name: {POLARITY_TASK}" in card and "type: acc" in card


def test_unknown_task_and_missing_lm_eval_are_named_before_any_work(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)  # never run: both errors come first
    with pytest.raises(EvaluationError, match="no task 'no_such_task'"):
        run_tasks(model, None, ["no_such_task"], polarity_task(str(tmp_path / "tasks")))
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(EvaluationError, match='pip install "hfprune\\[eval\\]"'):
        run_tasks(model, None, [POLARITY_TASK])
