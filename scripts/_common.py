"""Helpers shared by the benchmark scripts (timing, calibration batches, perplexity, tables, peak memory)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch

from hfprune.calibration.data import prepare_calibration
from hfprune.config.pruning_config import PruningConfig
from hfprune.evaluation.perplexity import perplexity  # noqa: F401  (re-exported: the library's one protocol)
from hfprune.examples import lee_texts, load_minilm, load_smollm2  # noqa: F401  (re-exported)


MB = 2 ** 20


def proc_status(key: str) -> float:
    """A /proc/self/status entry (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key)) * 1024 / MB


def trim_heap() -> None:
    """Collect garbage and hand freed heap back to the OS, so the resident set shows what is live."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def reset_peak() -> bool:
    """Reset the peak resident set (VmHWM) to the current one (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def bench_parser(doc: str | None, num_samples: int = 16, seq_len: int = 512,
                 batch_size: int = 4) -> argparse.ArgumentParser:
    """An argument parser with the calibration-size options every benchmark takes."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-samples", type=int, default=num_samples)
    ap.add_argument("--seq-len", type=int, default=seq_len)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    return ap


def supports(criterion: str, part: str) -> bool:
    """Whether ``criterion`` can score ``part`` ("weights", "2:4", "neurons", "heads")."""
    from hfprune.criteria import get_criterion
    from hfprune.errors import PruningError

    try:
        get_criterion(PruningConfig(criterion=criterion, granularity=part))
    except PruningError:
        return False
    return True


def device_line() -> str:
    """Where the numbers were taken: CPU model, cores, torch threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"device: CPU ({cpu}), {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, no GPU")


def token_batches(tok: Any, model: Any, num_samples: int, seq_len: int, batch_size: int,
                  split: str = "background") -> list[dict[str, torch.Tensor]]:
    """Packed Lee-news token batches, built exactly as `prune()` builds its calibration set."""
    cfg = PruningConfig(criterion="wanda",
                        calibration={"num_samples": num_samples, "seq_len": seq_len, "batch_size": batch_size})
    return prepare_calibration(lee_texts(split), model, cfg, tok).batches


def timed(fn: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> float:
    t = clock()
    fn()
    return clock() - t


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Median over ``repeats`` calls after ``warmup``; ``clock=time.process_time`` gives CPU seconds of this process,
    which other processes on a shared machine disturb far less than wall time (use it with 1 torch thread)."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, clock) for _ in range(repeats))


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


@torch.no_grad()
def sentence_embeddings(model: Any, tok: Any, sentences: list[str], batch_size: int = 16) -> torch.Tensor:
    """Mean-pooled last hidden states (the all-MiniLM-L6-v2 sentence embedding, before normalisation)."""
    model.eval()
    outs = []
    for i in range(0, len(sentences), batch_size):
        enc = tok(sentences[i:i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        outs.append((h * m).sum(1) / m.sum(1))
    return torch.cat(outs)


def lee_sentences(split: str = "test", limit: int = 200) -> list[str]:
    """Sentences of the Lee news text (split on '. '), at least 5 words each."""
    out = []
    for doc in lee_texts(split):
        out += [s.strip() + "." for s in doc.split(". ") if len(s.split()) >= 5]
    return out[:limit]


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A markdown table of ``rows`` (floats with 4 significant digits)."""
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def max_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(args: list[str], timeout: float = 900) -> dict[str, Any]:
    """Run ``python <args>`` in a fresh process; it prints one JSON line last, which is returned."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]}
    return json.loads(lines[-1])


def save_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
