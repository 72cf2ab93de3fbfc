"""The paper-reproduction scripts run end to end with ``--quick`` and write well-formed, sane results.

They are run in this process (imported from ``scripts/``) so that the three share one import of torch and
transformers; each takes a few seconds with its tiny settings.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
CHANCE = 0.1  # ten digit classes


@pytest.fixture(scope="module")
def run_quick(tmp_path_factory):
    sys.path.insert(0, str(SCRIPTS))
    out = tmp_path_factory.mktemp("repro")

    def run(name: str) -> dict:
        spec = importlib.util.spec_from_file_location(f"repro_{name}", SCRIPTS / "repro" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(["--quick", "--out", str(out), "--img", str(out)])
        assert (out / f"repro_{name}.png").stat().st_size > 0
        return json.loads((out / f"{name}.json").read_text())

    yield run
    sys.path.remove(str(SCRIPTS))


def check_common(payload: dict, keys: list[str], accuracies: list[str]) -> list[dict]:
    assert {"paper", "info", "settings", "rows", "records"} <= set(payload)
    assert payload["info"]["command"].startswith("PYTHONPATH=$PWD python scripts/repro/")
    rows = payload["rows"]
    for row in rows:
        assert set(keys) <= set(row) and row["n"] == 1
        for metric in accuracies:
            assert 0 <= row[metric] <= 1 and row[metric + "_std"] == 0
    dense = [r for r in rows if r["method"] == "dense"]
    assert len(dense) >= 1 and all(r["acc"] > 3 * CHANCE for r in dense)
    return rows


def test_ec(run_quick):
    payload = run_quick("ec")
    rows = check_common(payload, ["method", "ratio", "loss", "ft_loss"], ["acc", "ft_acc", "zero_params"])
    methods = {r["method"] for r in rows}
    assert {"EC", "magnitude", "Taylor (gradient)", "random"} <= methods
    for r in rows:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        if r["method"] != "dense":  # global ranking: the fraction of zero parameters is the ratio (biases aside)
            assert abs(r["zero_params"] - r["ratio"]) < 0.01


def test_ri(run_quick):
    rows = check_common(run_quick("ri"), ["training", "method", "target"], ["acc", "ft_acc", "zero_params"])
    assert {r["training"] for r in rows} >= {"plain"} and len({r["training"] for r in rows}) >= 2
    assert any(r["target"].startswith("tau") for r in rows)


def test_nexp(run_quick):
    payload = run_quick("nexp")
    rows = check_common(payload, ["method", "fraction", "compression"], ["acc", "ft_acc"])
    for r in rows:
        assert r["compression"] >= 1
    by_fraction: dict[float, set] = {}
    for r in rows:  # local scope: every method gives the same parameter count at a fraction
        by_fraction.setdefault(r["fraction"], set()).add(round(r["compression"], 6))
    assert all(len(c) == 1 for c in by_fraction.values())
    for c in payload["correlations"]:
        assert -1 <= c["spearman"] <= 1
    assert set(payload["compression_at_1pct"]) == {"acc", "ft_acc"}
