"""Fixtures shared by every test (temporary output folders, the loopback Hub) and the test environment (offline,
quiet transformers). Helpers are the ``tests.helpers`` package."""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
import transformers as T
from transformers.utils import hub as transformers_hub

from tests.helpers.hub_server import HUB_TOKEN, HubServer
from hfprune.cli import main
from tests.helpers.models import save_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
T.logging.set_verbosity_error()


@pytest.fixture(autouse=True, scope="session")
def generated_cache(tmp_path_factory) -> Path:
    """Self-generated calibration data are cached in a folder of the test session, never in the user's cache."""
    path = tmp_path_factory.mktemp("hfprune-cache")
    os.environ["HFPRUNE_CACHE"] = str(path)
    return path


@pytest.fixture
def tmp_out(tmp_path):
    return tmp_path / "out"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight LlamaForCausalLM with a word-level tokenizer, saved like a Hub checkpoint."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def pruned_dirs(tmp_path_factory, tiny_llama):
    """A uniform (loader 'transformers') and a non-uniform (loader 'hfprune') pruned tiny llama."""
    root = tmp_path_factory.mktemp("pruned")
    base = dict(criterion="magnitude", granularity="neurons", sparsity=0.5)
    for name, scope in (("uniform", "local"), ("nonuniform", "global")):
        assert main(["prune", str(tiny_llama), *sum((["--" + k.replace("_", "-"), str(v)] for k, v in base.items()),
                                                    []), "--scope", scope, "--output", str(root / name),
                     "--quiet"]) == 0
    return root


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running loopback Hub; huggingface_hub's reading side (from_pretrained) pointed at it.

    The endpoint constants are read at import time, so they are patched rather than set through HF_ENDPOINT; the
    download cache and the agent-registry cache are moved to temporary paths so the user's HF_HOME is not touched.
    """
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"), raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with HubServer(token=HUB_TOKEN) as server:
        monkeypatch.setattr(hub_constants, "ENDPOINT", server.url)
        monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(transformers_hub, "_hf_api", None)  # transformers' shared HfApi keeps its endpoint
        yield server
