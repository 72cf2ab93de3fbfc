"""Every entry point under 2 processes (torchrun, gloo on CPU): each process calibrates a disjoint share of the
batches, all decide the same masks, one process writes and prints, and the result equals a 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.models import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]

pytestmark = pytest.mark.multiprocess


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=ENV, timeout=300, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[:6000]
    return done


def _same_weights(a: str, b: str, exact: bool) -> None:
    wa, wb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:  # compensation sums statistics in another order
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_model("llama").save_pretrained(path)
    return str(path)


def _prune_cli(model_dir: str, out: str) -> list[str]:
    return ["-m", "hfprune", "prune", model_dir, "--criterion", "wanda", "--granularity", "neurons", "--sparsity",
            "0.5", "--calibration-data", "random", "--calibration.num-samples", "8", "--calibration.seq-len", "12", "--calibration.batch-size", "2",
            "--output", out]


def test_cli_prune_two_processes_write_once_and_match_one_process(model_dir, tmp_path):
    two = _run(TORCHRUN + _prune_cli(model_dir, str(tmp_path / "two")))
    one = _run([sys.executable] + _prune_cli(model_dir, str(tmp_path / "one")))
    assert two.stdout.count("criterion wanda") == 1, two.stdout  # the report is printed once
    assert two.stderr.count("saved to") == 1, two.stderr
    _same_weights(str(tmp_path / "two"), str(tmp_path / "one"), exact=True)
    cal2 = json.load(open(tmp_path / "two" / "pruning_report.json"))["calibration"]
    cal1 = json.load(open(tmp_path / "one" / "pruning_report.json"))["calibration"]
    assert cal2["processes"] == 2 and cal1["processes"] == 1
    assert cal2["batches_per_process"] == [2, 2] and cal1["batches_per_process"] == [4]


def test_one_pass_two_processes_decide_the_same_masks_as_one(model_dir, tmp_path):
    """calibration.mode='one_pass': every process runs every batch through the refit pass, so all decide the same
    masks and weights, equal to a 1-process run's."""
    extra = ["--calibration.mode", "one_pass"]
    two = _run(TORCHRUN + _prune_cli(model_dir, str(tmp_path / "two")) + extra)
    _run([sys.executable] + _prune_cli(model_dir, str(tmp_path / "one")) + extra)
    assert two.stderr.count("saved to") == 1, two.stderr
    _same_weights(str(tmp_path / "two"), str(tmp_path / "one"), exact=True)
    cal2 = json.load(open(tmp_path / "two" / "pruning_report.json"))["calibration"]
    assert cal2["processes"] == 2 and cal2["batches_per_process"] == [4, 4]


def test_run_one_shot_recipe_two_processes(model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""model: {{name: {model_dir}}}
pruning: {{criterion: wanda, granularity: weights, sparsity: 0.5, num_samples: 8, seq_len: 12, batch_size: 2}}
calibration: {{data: random}}
output: {{dir: {tmp_path / 'two'}}}
""")
    two = _run(TORCHRUN + ["-m", "hfprune", "run", str(recipe)])
    _run([sys.executable, "-m", "hfprune", "run", str(recipe), "--output", str(tmp_path / "one")])
    assert two.stdout.count("criterion wanda") == 1 and two.stderr.count("saved to") == 1
    _same_weights(str(tmp_path / "two"), str(tmp_path / "one"), exact=True)
    assert json.load(open(tmp_path / "two" / "pruning_report.json"))["calibration"]["processes"] == 2


def test_prune_from_a_user_script_two_processes(tmp_path):
    script = os.path.join(ROOT, "tests", "engine", "prune_ddp_run.py")
    _run(TORCHRUN + [script, str(tmp_path / "two")])  # rank 1 would fail on an existing folder if it wrote
    _run([sys.executable, script, str(tmp_path / "one")])
    _same_weights(str(tmp_path / "two" / "model"), str(tmp_path / "one" / "model"), exact=False)
    shares = [json.load(open(tmp_path / "two" / f"report_rank{r}.json")) for r in (0, 1)]
    one = json.load(open(tmp_path / "one" / "report_rank0.json"))
    assert shares[0] == shares[1] and shares[0]["batches_per_process"] == [2, 2]
    assert sum(shares[0]["batches_per_process"]) == sum(one["batches_per_process"]) == 4
