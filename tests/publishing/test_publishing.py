"""Model cards and Hub pushes, against a loopback Hub that speaks huggingface_hub's real protocol."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from transformers import AutoModelForSequenceClassification

import hfprune
from hfprune.errors import CheckpointError, PublishError
from hfprune.publishing import push_to_hub, render_model_card, write_model_card
from hfprune.report.card import PLACEHOLDER_ID, TEMPLATE_PATH
from hfprune.report.pruning_report import PruningReport
from tests.helpers.hub_server import HUB_TOKEN as TOKEN  # noqa: E402  (the `hub` fixture lives in conftest.py)
from tests.helpers.publish import BASE_MODEL, KINDS, folder_digest, tiny_bert, write_pruned_folder  # noqa: E402

REPO = "tester/bert-pruned"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module", params=KINDS)
def saved(request, tmp_path_factory) -> tuple[str, str]:
    """(kind, folder) of a complete saved folder of each kind."""
    folder = write_pruned_folder(tmp_path_factory.mktemp(request.param) / "pruned", request.param)
    return request.param, folder


def _card(folder: str) -> ModelCard:
    return ModelCard.load(os.path.join(folder, "README.md"))


def _python_block(text: str, section: str = "How to use") -> str:
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    assert len(blocks) == 1, f"the card's {section} section must hold exactly one python snippet"
    return blocks[0]


def _logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.arange(16).reshape(2, 8) % 100
    with torch.no_grad():
        return model(input_ids=x).logits


# --- model cards ------------------------------------------------------------------------------------------------
def test_card_metadata_parses_with_huggingface_hub(saved):
    kind, folder = saved
    report = PruningReport.load(folder)
    card = _card(folder)
    data = card.data
    assert isinstance(data, ModelCardData)
    assert data.base_model == BASE_MODEL
    assert data.library_name == ("hfprune" if kind == "structured_nonuniform" else "transformers")
    assert data.pipeline_tag == "text-classification"
    assert {"pruned", "hfprune", report.criterion} <= set(data.tags)
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == {m: e["after"] for m, e in report.evaluation.items()}
    assert all(r.task_type == "text-classification" for r in data.eval_results)
    again = ModelCardData(**data.to_dict())  # model-index survives a to_dict / parse round trip
    assert again.to_dict() == data.to_dict()
    assert "license" not in data.to_dict()  # unknown base license: not invented


def test_card_numbers_equal_the_report(saved):
    kind, folder = saved
    r = PruningReport.load(folder)
    text = _card(folder).text
    for number in (r.params_before, r.params_after, r.nonzero_after, r.macs_before, r.macs_after):
        assert f"{number:,}" in text
    assert f"{r.param_ratio:.2f}x" in text and f"{r.macs_ratio:.2f}x" in text
    assert f"{r.achieved_sparsity:.1%} removed" in text
    assert f"criterion **{r.criterion}**" in text and f"sparsity **{r.sparsity}**" in text
    for metric, e in r.evaluation.items():
        assert f"| {metric} | {e['before']} | {e['after']} | {e['after'] - e['before']:+.4f} |" in text
    for lr in r.layers:
        assert f"| `{lr.name}` | {lr.kind} | {lr.total:,} | {lr.kept:,} | {lr.kept / lr.total:.1%}" in text
    assert r.command in text
    if r.latency:
        assert f"| {r.latency['dense_ms']} | {r.latency['pruned_ms']} |" in text
    else:
        assert "latency" not in text
    if r.calibration["source"] == "random":
        assert "data-agnostic" in text
    else:
        assert f"{r.calibration['name']}: {r.calibration['num_samples']} samples" in text
        assert f"{r.calibration['tokens']:,} tokens" in text
    cfg = json.load(open(os.path.join(folder, "pruning_config.json")))["pruning_config"]
    assert f"`{cfg['training']['schedule']}`" in text
    if kind == "unstructured":
        assert "magnitude option `norm` | `2`" in text and "stored as zeros" in text
    if kind == "structured_nonuniform":
        assert "(3 steps from step 0 to 300)" in text and "kept `min_units`" in text


def test_card_plot_is_a_png(saved):
    _, folder = saved
    with open(os.path.join(folder, "kept_units.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "![kept units per layer](kept_units.png)" in _card(folder).text


def test_card_load_snippet_runs(saved):
    kind, folder = saved
    code = _python_block(_card(folder).text)
    assert f'"{PLACEHOLDER_ID}"' in code
    if kind == "structured_nonuniform":
        assert "hfprune.load_pruned(" in code and "from_pretrained(" not in code
    else:
        assert "AutoModelForSequenceClassification.from_pretrained(" in code
    scope: dict = {}
    exec(code.replace(PLACEHOLDER_ID, folder), scope)
    expected = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert torch.equal(_logits(scope["model"].eval()), _logits(expected))


def test_license_argument_and_inherited_from_base(tmp_path):
    folder = write_pruned_folder(tmp_path / "p", "structured_uniform")
    assert render_model_card(folder, license="apache-2.0").data.license == "apache-2.0"
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    report = json.load(open(os.path.join(folder, "pruning_report.json")))
    report["base_model"] = str(base)
    json.dump(report, open(os.path.join(folder, "pruning_report.json"), "w"))
    card = render_model_card(folder)
    assert card.data.license == "mit"
    assert card.data.base_model is None  # a local path is not a Hub id: the Hub would reject it


def test_card_needs_the_report(tmp_path):
    folder = write_pruned_folder(tmp_path / "p", "unstructured")
    os.remove(os.path.join(folder, "pruning_report.json"))
    with pytest.raises(CheckpointError, match="pruning_report.json is missing"):
        write_model_card(folder)


def test_template_ships_in_the_wheel(tmp_path):
    """hfprune/model_cards is a symlink to the top-level model_cards/: the wheel must hold real files."""
    assert TEMPLATE_PATH.is_file()
    src = tmp_path / "src"  # a copy, so the build leaves no build/ folder in the checkout
    skip = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(ROOT, src, symlinks=True, ignore=skip)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("hfprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hfprune/model_cards/pruned_model_card.md" in names
    assert "hfprune/report/card.py" in names


# --- with the core engine: prune() -> PruningResult.save_pretrained -> write_model_card -------------------------
CORE_CASES = {"unstructured": ("weights", "local", "transformers"),
              "structured_uniform": ("neurons", "local", "transformers"),
              "structured_nonuniform": ("neurons+heads", "global", "hfprune")}


@pytest.fixture(scope="module", params=list(CORE_CASES))
def core_saved(request, tmp_path_factory) -> tuple[str, str, torch.Tensor]:
    """(kind, folder, logits of the pruned model in memory) of a real prune() run on a tiny BERT."""
    granularity, scope, _ = CORE_CASES[request.param]
    config = hfprune.PruningConfig(criterion="magnitude", granularity=granularity, sparsity=0.5, scope=scope)
    result = hfprune.prune(tiny_bert(), config, progress=False)
    folder = str(tmp_path_factory.mktemp("core") / request.param)
    result.save_pretrained(folder)
    return request.param, folder, _logits(result.model.eval())


def test_core_saved_folder_card(core_saved):
    kind, folder, logits = core_saved
    report = PruningReport.load(folder)
    assert report.loader == CORE_CASES[kind][2]
    card = _card(folder)
    assert card.data.library_name == ("hfprune" if report.loader == "hfprune" else "transformers")
    assert card.data.base_model is None and card.data.eval_results is None  # nothing recorded, nothing claimed
    for number in (report.params_before, report.params_after, report.macs_before, report.macs_after):
        assert f"{number:,}" in card.text
    for lr in report.layers:
        assert f"| `{lr.name}` | {lr.kind} | {lr.total:,} | {lr.kept:,} |" in card.text
    assert os.path.isfile(os.path.join(folder, "kept_units.png"))
    scope: dict = {}
    exec(_python_block(card.text).replace(PLACEHOLDER_ID, folder), scope)
    assert torch.allclose(_logits(scope["model"].eval()), logits, atol=1e-6)


def test_core_card_recipe_rebuilds_the_config(core_saved):
    _, folder, _ = core_saved
    recipe = _python_block(_card(folder).text, "Reproduce")
    (line,) = [x for x in recipe.splitlines() if x.startswith("config = ")]
    rebuilt = eval(line.removeprefix("config = "), {"PruningConfig": hfprune.PruningConfig})
    assert rebuilt == hfprune.PruningConfig.from_pretrained(folder)


# --- pushing ----------------------------------------------------------------------------------------------------
def test_push_end_to_end_then_from_pretrained(hub, tmp_path):
    folder = write_pruned_folder(tmp_path / "p", "structured_uniform")
    before = folder_digest(folder)
    url = push_to_hub(folder, REPO, token=TOKEN, endpoint=hub.url)
    assert url.startswith(f"{hub.url}/{REPO}/commit/")
    assert folder_digest(folder) == before
    assert hub.unknown == []
    remote = hub.files(REPO)
    assert sorted(remote) == sorted(before)
    card = remote.pop("README.md").decode()
    assert f'from_pretrained("{REPO}")' in card and PLACEHOLDER_ID not in card
    for name, data in remote.items():
        assert open(os.path.join(folder, name), "rb").read() == data
    loaded = AutoModelForSequenceClassification.from_pretrained(REPO).eval()
    assert os.path.isdir(tmp_path / "hub-cache")
    local = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert torch.equal(_logits(loaded), _logits(local))
    assert all(TOKEN.encode() not in data for data in hub.files(REPO).values())
    for root, _, files in os.walk(tmp_path):  # the token is never written: not in the folder, not in the cache
        for name in files:
            assert TOKEN.encode() not in open(os.path.join(root, name), "rb").read()


def test_push_result_object_pr_and_branch(hub, tmp_path):
    class Result:  # the duck type push_to_hub accepts: anything with save_pretrained(path)
        def save_pretrained(self, path: str) -> None:
            write_pruned_folder(path, "unstructured")

    url = push_to_hub(Result(), REPO, token=TOKEN, endpoint=hub.url, commit_message="first", private=True)
    assert "README.md" in hub.files(REPO) and hub.repos[REPO].private
    assert hub.repos[REPO].messages[url.rsplit("/", 1)[1]] == "first"
    pr = push_to_hub(Result(), REPO, token=TOKEN, endpoint=hub.url, create_pr=True)
    assert pr == f"{hub.url}/{REPO}/discussions/1" and url != pr
    push_to_hub(Result(), REPO, token=TOKEN, endpoint=hub.url, revision="dev")
    assert "config.json" in hub.files(REPO, "dev")
    assert hub.unknown == []


def test_push_a_pruning_result(hub):
    config = hfprune.PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.25)
    result = hfprune.prune(tiny_bert(), config, progress=False)
    push_to_hub(result, REPO, token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    assert {"config.json", "model.safetensors", "pruning_config.json", "pruning_report.json", "README.md",
            "kept_units.png"} <= set(files)
    assert json.loads(files["pruning_report.json"]) == result.report.to_dict()
    loaded = AutoModelForSequenceClassification.from_pretrained(REPO).eval()
    assert torch.allclose(_logits(loaded), _logits(result.model.eval()), atol=1e-6)


def test_pushed_card_snippet_loads_from_the_hub(hub, core_saved):
    kind, folder, logits = core_saved
    push_to_hub(folder, REPO, token=TOKEN, endpoint=hub.url)
    code = _python_block(hub.files(REPO)["README.md"].decode())
    assert f'"{REPO}"' in code
    scope: dict = {}
    exec(code, scope)
    assert torch.allclose(_logits(scope["model"].eval()), logits, atol=1e-6)


def _assert_clean_failure(exc: pytest.ExceptionInfo, folder: str, before: dict, *words: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and TOKEN not in message and "hf_loopback" not in message
    for word in words:
        assert word in message
    assert folder_digest(folder) == before


@pytest.mark.parametrize("failure", ["unreachable", "401", "500_on_commit"])
def test_push_failures_are_clear_and_leave_the_folder(hub, tmp_path, caplog, failure):
    caplog.set_level(logging.DEBUG)
    folder = write_pruned_folder(tmp_path / "p", "structured_nonuniform")
    before = folder_digest(folder)
    token, endpoint = TOKEN, hub.url
    if failure == "unreachable":
        endpoint = "http://127.0.0.1:9"  # discard port: nothing listens
    elif failure == "401":
        token = "hf_wrongTokenButSecretToo987654"
    else:
        hub.fail_commit = 500
    with pytest.raises(PublishError) as exc:
        push_to_hub(folder, REPO, token=token, endpoint=endpoint)
    assert token not in str(exc.value) and token not in caplog.text
    words = {"unreachable": ("creating the repository", "cannot reach"),
             "401": ("creating the repository", "401", "hf auth login"),
             "500_on_commit": ("uploading the files", "500", "try again")}[failure]
    _assert_clean_failure(exc, folder, before, *words)
    if failure == "500_on_commit":
        assert ("POST", f"/api/models/{REPO}/commit/main") in hub.requests
        assert hub.files(REPO) == {}  # nothing half-published


def test_push_with_metadata_the_hub_refuses(hub, tmp_path):
    folder = write_pruned_folder(tmp_path / "p", "unstructured")
    card = os.path.join(folder, "README.md")
    text = open(card).read().replace("- name: bert-base-uncased-pruned", "- nom: broken")
    open(card, "w").write(text)
    before = folder_digest(folder)
    with pytest.raises(PublishError, match="refused the metadata of README.md") as exc:
        push_to_hub(folder, REPO, token=TOKEN, endpoint=hub.url)
    _assert_clean_failure(exc, folder, before, "model_index", "write_model_card")
    assert hub.files(REPO) == {}


@pytest.mark.parametrize("repo_id", ["bert-pruned", "a/b/c", "me/bad name", "me/--x", "", None])
def test_invalid_repo_id_fails_before_any_request(hub, tmp_path, repo_id):
    folder = write_pruned_folder(tmp_path / "p", "unstructured")
    before = folder_digest(folder)
    with pytest.raises(PublishError, match="namespace/name") as exc:
        push_to_hub(folder, repo_id, token=TOKEN, endpoint=hub.url)
    _assert_clean_failure(exc, folder, before)
    assert hub.requests == []


def test_push_refuses_a_folder_not_saved_by_hfprune(hub, tmp_path):
    tiny_bert().save_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="pruning_config.json is missing"):
        push_to_hub(str(tmp_path / "plain"), REPO, token=TOKEN, endpoint=hub.url)
    assert hub.requests == []


# --- atomic saving ----------------------------------------------------------------------------------------------
# The writer imports the real hfprune/io.py under a bare package stub: importing hfprune itself pulls in torch
# (seconds on a small machine), which would make the kill timings meaningless.
_WRITER = textwrap.dedent("""
    import os, sys, time, types
    pkg = types.ModuleType("hfprune")
    pkg.__path__ = [os.path.join(os.getcwd(), "hfprune")]
    sys.modules["hfprune"] = pkg
    from hfprune.checkpoint.io import atomic_output_dir
    with atomic_output_dir(sys.argv[1], overwrite=True) as tmp:
        for i in range(20):
            with open(os.path.join(tmp, f"shard-{i}.bin"), "wb") as f:
                f.write(os.urandom(1 << 16))
            if i == 5:
                print("writing", flush=True)
            time.sleep(float(sys.argv[2]))
    print("done", flush=True)
""")


@pytest.mark.parametrize("kill", [True, False])
def test_process_killed_while_saving_leaves_old_or_complete_folder(tmp_path, kill):
    target = write_pruned_folder(tmp_path / "out", "unstructured")
    before = folder_digest(target)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, target, "0.05" if kill else "0"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "writing"
    if kill:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    after = folder_digest(target)
    if kill:
        assert proc.returncode == -signal.SIGKILL
        assert after == before
    else:
        assert proc.returncode == 0
        assert sorted(after) == [f"shard-{i}.bin" for i in sorted(range(20), key=str)]
        assert not [n for n in os.listdir(tmp_path) if ".old-" in n]


def test_kill_at_random_moments_never_leaves_a_partial_folder(tmp_path):
    target = write_pruned_folder(tmp_path / "out", "unstructured")
    old = folder_digest(target)
    complete = sorted(f"shard-{i}.bin" for i in range(20))
    for delay in (0.0, 0.01, 0.02, 0.04, 0.08, 0.15):  # from mid-write, through the swap, to after the end
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, target, "0.002"], stdout=subprocess.PIPE,
                                text=True, cwd=ROOT)
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        now = folder_digest(target)
        assert now == old or sorted(now) == complete
        old = now


