"""Pruned SmolLM2-135M in llama.cpp: a uniform folder (FFN neurons, local scope) converted as it is, and a
non-uniform one (global scope) exported to the nemotron-nas layout, each converted to GGUF f32 by llama.cpp's
``convert_hf_to_gguf.py`` and run through llama-cpp-python against transformers on the same token ids.

Both runtimes see the ids of the HF tokenizer (models compared, not tokenizers): perplexity by hfprune's protocol
(``--eval-tokens`` tokens of lee.cor joined with EOS, non-overlapping ``--eval-seq-len`` windows, no BOS), the
largest logit difference over the first window, and ``--greedy-tokens`` greedy steps (argmax, step by step) from
a fixed prompt. The reference is ``from_pretrained`` for the uniform folder and ``hfprune.load_pruned`` of the
non-uniform source (not of the export). ``--vendor`` is llama.cpp's source tree (the converter, ``conversion/``
and the matching ``gguf-py/``). Where the DeciLM converter cannot read the tokenizer (it takes a non-Llama-3
vocabulary for a SentencePiece-style Llama one), ``--deci-vocab gpt2`` converts again with the byte-level BPE
reader the Llama converter uses for SmolLM2, and the result states it.

    PYTHONPATH=.:scripts nice -n 5 python scripts/deploy/llamacpp.py \\
        --vendor /tmp/build/llama_cpp_python-0.3.36/vendor/llama.cpp --out bench_out/llamacpp.json
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: _common

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from _common import device_line, lee_texts, load_smollm2, perplexity, save_json, set_threads  # noqa: E402

import hfprune  # noqa: E402
from hfprune.evaluation.perplexity import PerplexityProtocol, token_stream  # noqa: E402
from hfprune.report.measure import count_params  # noqa: E402

PROMPT = "The Prime Minister said on Tuesday that the government would"
# The converter with DeciModel.set_vocab replaced by the byte-level BPE reader (argv: vendor, converter args).
DECI_GPT2_VOCAB = """import runpy, sys
vendor = sys.argv[1]
sys.path[:0] = [vendor, vendor + "/gguf-py"]
from conversion.deci import DeciModel
DeciModel.set_vocab = lambda self: self._set_vocab_gpt2()
sys.argv = [vendor + "/convert_hf_to_gguf.py", *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def prune_folders(args: argparse.Namespace) -> dict[str, str]:
    """The uniform folder and the nemotron-nas export of the non-uniform one; returns {name: folder}."""
    folders = {"uniform": os.path.join(args.work_dir, "uniform"),
               "global": os.path.join(args.work_dir, "global"),
               "nemotron-nas": os.path.join(args.work_dir, "global-nemotron-nas")}
    for name, scope in (("uniform", "local"), ("global", "global")):
        if os.path.isdir(folders[name]):
            continue
        model, tok = load_smollm2()
        config = hfprune.PruningConfig(criterion="wanda", granularity="neurons", sparsity=args.sparsity, scope=scope,
                                       calibration={"num_samples": args.num_samples, "seq_len": args.seq_len},
                                       seed=0)
        result = hfprune.prune(model, config, calibration_data=lee_texts("background"), tokenizer=tok,
                               progress=False)
        result.save_pretrained(folders[name])  # with the tokenizer passed to prune
    if not os.path.isdir(folders["nemotron-nas"]):
        hfprune.export(folders["global"], folders["nemotron-nas"], format="nemotron-nas")
    return folders


def convert(folder: str, outfile: str, vendor: str, deci_vocab: str | None = None) -> dict[str, Any]:
    """Run llama.cpp's converter (f32) in a subprocess; its last stderr lines verbatim when it fails."""
    tail = [folder, "--outfile", outfile, "--outtype", "f32"]
    cmd = ([sys.executable, "-c", DECI_GPT2_VOCAB, vendor, *tail] if deci_vocab == "gpt2"
           else [sys.executable, os.path.join(vendor, "convert_hf_to_gguf.py"), *tail])
    env = {**os.environ, "PYTHONPATH": os.path.join(vendor, "gguf-py")}
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out = {"ok": p.returncode == 0, "seconds": round(time.perf_counter() - t, 1), "deci_vocab": deci_vocab}
    if p.returncode != 0:
        out["error"] = "\n".join(p.stderr.strip().splitlines()[-12:])
    return out


def windows(ids: list[int], seq_len: int) -> list[list[int]]:
    """hfprune's non-overlapping windows (`measure_perplexity`)."""
    return [ids[i:i + seq_len] for i in range(0, len(ids) - 1, seq_len) if len(ids[i:i + seq_len]) > 1]


def nll_sum(logits: np.ndarray, window: list[int]) -> float:
    """Summed negative log-likelihood of ``window[1:]`` under ``logits`` (one row per position)."""
    logp = torch.log_softmax(torch.from_numpy(np.asarray(logits[:len(window) - 1], dtype=np.float64)), -1)
    return float(-logp[torch.arange(len(window) - 1), torch.tensor(window[1:])].sum())


@torch.no_grad()
def hf_greedy(model: Any, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@torch.no_grad()
def hf_logits(model: Any, window: list[int]) -> np.ndarray:
    return model(input_ids=torch.tensor([window])).logits[0].double().numpy()


def evaluate_hf(model: Any, tok: Any, args: argparse.Namespace, first: list[int],
                prompt: list[int]) -> dict[str, Any]:
    t = time.perf_counter()
    ppl = perplexity(model, tok, lee_texts("test"), args.eval_seq_len, args.eval_tokens)
    t_ppl = time.perf_counter() - t
    t = time.perf_counter()
    greedy = hf_greedy(model, prompt, args.greedy_tokens)
    return {"params": count_params(model)[0], "perplexity": ppl, "greedy": greedy, "logits": hf_logits(model, first),
            "seconds": {"perplexity": round(t_ppl, 2), "greedy": round(time.perf_counter() - t, 2)}}


def llama_greedy(llm: Any, prompt: list[int], steps: int) -> list[int]:
    llm.reset()
    out: list[int] = []
    new = list(prompt)
    for _ in range(steps):
        llm.eval(new)
        new = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
        out += new
    return out


def llama_logits(llm: Any, window: list[int]) -> np.ndarray:
    """One row of logits per token of ``window``, from an empty context (no BOS added)."""
    llm.reset()
    llm.eval(window)
    return np.array(llm.scores[:len(window)])


def same_tokenization(llm: Any, tok: Any, texts: list[str]) -> int:
    """How many of ``texts`` llama.cpp's tokenizer (from the GGUF) turns into the HF tokenizer's ids."""
    return sum(llm.tokenize(t.encode(), add_bos=False) == tok(t, add_special_tokens=False)["input_ids"]
               for t in texts)


def evaluate_gguf(path: str, tok: Any, ids: list[int], prompt: list[int],
                  args: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=max(args.eval_seq_len, len(prompt) + args.greedy_tokens),
                          n_batch=args.eval_seq_len, logits_all=True, verbose=False, n_threads=args.threads)
    t = time.perf_counter()
    nll, count, first = 0.0, 0, None
    for w in windows(ids, args.eval_seq_len):
        logits = llama_logits(llm, w)
        first = logits if first is None else first
        nll += nll_sum(logits, w)
        count += len(w) - 1
    t_ppl = time.perf_counter() - t
    t = time.perf_counter()
    greedy = llama_greedy(llm, prompt, args.greedy_tokens)
    texts = lee_texts("test")
    return {"params": llama_cpp.llama_model_n_params(llm.model), "perplexity": math.exp(nll / count),
            "greedy": greedy, "logits": first, "same_ids": f"{same_tokenization(llm, tok, texts)}/{len(texts)} texts",
            "seconds": {"perplexity": round(t_ppl, 2), "greedy": round(time.perf_counter() - t, 2)}}


def same_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare(hf: dict[str, Any], gg: dict[str, Any], tok: Any) -> dict[str, Any]:
    """The row of one model: perplexities, greedy agreement (and where it splits), logit difference, times."""
    n = same_prefix(hf["greedy"], gg["greedy"])
    row = {"params": hf["params"], "gguf_params": gg["params"],
           "ppl_transformers": round(hf["perplexity"], 4), "ppl_llamacpp": round(gg["perplexity"], 4),
           "ppl_rel_diff": round(gg["perplexity"] / hf["perplexity"] - 1, 6),
           "max_abs_logit_diff": round(float(np.abs(hf["logits"] - gg["logits"]).max()), 5),
           "greedy_same": n, "greedy_steps": len(hf["greedy"]), "llamacpp_tokenizer_same_ids": gg["same_ids"],
           "greedy_text_transformers": tok.decode(hf["greedy"]), "greedy_text_llamacpp": tok.decode(gg["greedy"]),
           "seconds_transformers": hf["seconds"], "seconds_llamacpp": gg["seconds"]}
    if n < len(hf["greedy"]):
        row["greedy_split"] = {"step": n, "transformers": hf["greedy"][n], "llamacpp": gg["greedy"][n]}
    return row


def versions(vendor: str) -> dict[str, str]:
    import llama_cpp

    with open(os.path.join(vendor, "gguf-py", "pyproject.toml")) as f:
        gguf_py = next(l.split('"')[1] for l in f if l.startswith("version"))
    return {"llama_cpp_python": llama_cpp.__version__, "llama_cpp": llama_cpp.llama_version().decode(),
            "gguf_py": gguf_py, "transformers": transformers.__version__, "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vendor", required=True, help="llama.cpp source tree (convert_hf_to_gguf.py, gguf-py/)")
    ap.add_argument("--work-dir", default="bench_out/llamacpp",
                    help="pruned folders (reused when present) and GGUF files, about 2.2 GB")
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--greedy-tokens", type=int, default=32)
    ap.add_argument("--deci-vocab", choices=["gpt2", "none"], default="gpt2",
                    help="vocabulary reader the DeciLM conversion falls back on when its own fails ('none': no retry)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_out/llamacpp.json")
    args = ap.parse_args()
    set_threads(args.threads)
    folders = prune_folders(args)
    tok = transformers.AutoTokenizer.from_pretrained(folders["uniform"])
    ids = token_stream(tok, lee_texts("test"), PerplexityProtocol(args.eval_seq_len, args.eval_tokens))
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    first = windows(ids, args.eval_seq_len)[0]
    results: dict[str, Any] = {"device": device_line(), "versions": versions(args.vendor), "prompt": PROMPT,
                               "eval_tokens": len(ids), "eval_seq_len": args.eval_seq_len, "models": {}}
    for name, folder, reference in (("uniform", folders["uniform"], folders["uniform"]),
                                    ("nemotron-nas", folders["nemotron-nas"], folders["global"])):
        gguf = os.path.join(args.work_dir, f"{name}-f32.gguf")
        conversion = convert(folder, gguf, args.vendor)
        if not conversion["ok"] and name == "nemotron-nas" and args.deci_vocab != "none":
            conversion = {**convert(folder, gguf, args.vendor, args.deci_vocab), "first_try": conversion}
        row: dict[str, Any] = {"folder": folder, "reference": reference, "conversion": conversion}
        if conversion["ok"]:
            model = (transformers.AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32)
                     if name == "uniform" else hfprune.load_pruned(reference))
            row.update(compare(evaluate_hf(model, tok, args, first, prompt),
                               evaluate_gguf(gguf, tok, ids, prompt, args), tok))
        results["models"][name] = row
        print(name, {k: v for k, v in row.items() if not k.startswith("greedy_text")}, flush=True)
        save_json(args.out, results)


if __name__ == "__main__":
    main()
