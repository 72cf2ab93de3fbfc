"""llm-compressor's one-shot Wanda / SparseGPT on SmolLM2-135M, for comparison with hfprune (scripts/bench/quality.py).

llm-compressor pins an older transformers (<= 5.17), so it lives in its own venv:
    python -m venv /tmp/llmc && /tmp/llmc/bin/pip install torch==2.13.0 llmcompressor
    PYTHONPATH=. python scripts/bench/llmcompressor.py --prepare /tmp/smollm2_hf      # system python + hfprune
    /tmp/llmc/bin/python scripts/bench/llmcompressor.py --model /tmp/smollm2_hf        # the venv
Calibration and perplexity use the same Lee texts, packing and windows as scripts/bench/quality.py (the perplexity
function is repeated here because hfprune is not installed in that venv).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch


def lee_path_texts(name: str, root: str) -> list[str]:
    with open(f"{root}/{name}", encoding="latin-1") as f:
        return [l.strip() for l in f if l.strip()]


def pack(tok, texts, n, seq_len) -> torch.Tensor:
    ids: list[int] = []
    for t in texts:
        ids += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if n and len(ids) >= n * seq_len:
            break
    k = len(ids) // seq_len if not n else min(n, len(ids) // seq_len)
    return torch.tensor(ids[: k * seq_len]).view(k, seq_len)


@torch.no_grad()
def perplexity(model, tok, texts, seq_len, max_tokens) -> float:
    """hfprune's protocol (`hfprune.evaluation.perplexity`: EOS between texts, non-overlapping windows) rewritten
    here because this runs in llm-compressor's own environment, without hfprune; with a token budget that is a
    multiple of ``seq_len`` both give the same number."""
    x = pack(tok, texts, max_tokens // seq_len, seq_len)
    nll = 0.0
    for row in x:
        nll += model(input_ids=row[None], labels=row[None]).loss.item()
    return math.exp(nll / len(x))


def prepare(folder: str) -> None:
    import shutil

    from gensim.test.utils import datapath

    from hfprune.examples import load_smollm2

    model, tok = load_smollm2()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    for name in ("lee_background.cor", "lee.cor"):  # the venv has no gensim: copy the texts next to the model
        shutil.copy(datapath(name), folder)
    print("saved", folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", metavar="DIR", help="save SmolLM2 as a normal HF folder (system python)")
    ap.add_argument("--model", default="/tmp/smollm2_hf")
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--ppl-tokens", type=int, default=1024)
    ap.add_argument("--ppl-seq-len", type=int, default=256)
    ap.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"], help="wanda, sparsegpt; gptq: 4-bit "
                    "weights, groups of 128 (W4A16, quantizing the --model folder, e.g. a pruned one); dense: the "
                    "--model as it is, to check that both sides measure the same perplexity")
    ap.add_argument("--group-size", type=int, default=128, help="gptq: weights per scale (SmolLM2's 576-wide inputs "
                    "need 64: llm-compressor refuses widths that are not multiples)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--structures", nargs="+", default=["0:0", "2:4"], help="0:0 = unstructured")
    args = ap.parse_args()
    if args.prepare:
        return prepare(args.prepare)
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    calib = pack(tok, lee_path_texts("lee_background.cor", args.model), args.num_samples, args.seq_len)
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    test = lee_path_texts("lee.cor", args.model)
    rows = []
    if "dense" in args.methods:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        r = {"method": "dense", "ppl": perplexity(model, tok, test, args.ppl_seq_len, args.ppl_tokens)}
        rows.append(r)
        print(json.dumps(r), flush=True)
    for method in [m for m in args.methods if m != "dense"]:
        for structure in args.structures if method != "gptq" else [f"W4A16 g{args.group_size}"]:
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
            if method == "gptq":
                weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                           "group_size": args.group_size}  # W4A16's scheme with the group size given
                recipe = GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                                      ignore=["re:.*lm_head"])
            else:
                cls = WandaPruningModifier if method == "wanda" else SparseGPTModifier
                recipe = cls(sparsity=0.5, mask_structure=structure, targets=["Linear"], ignore=["re:.*lm_head"])  # the documented pattern; a bare "lm_head" did not match
            t = time.perf_counter()
            try:
                oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(calib),
                        max_seq_length=args.seq_len, output_dir=None)
                r = {"oneshot_s": time.perf_counter() - t}  # the pruning alone; "seconds" adds the evaluation
                r["ppl"] = perplexity(model, tok, test, args.ppl_seq_len, args.ppl_tokens)
            except Exception as e:
                r = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            r.update(method=f"llm-compressor {method}", setting=structure if structure == "2:4" or method == "gptq"
                     else "50% unstructured",
                     seconds=time.perf_counter() - t)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
