"""Recovery after pruning: distillation (logits, hidden states, attention outputs), token budgets, LoRA merged into
a plain checkpoint, resume, the recipe through `hfprune run`, and bad input before training."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers as T
import yaml

from hfprune import ConfigError, PruningConfig, prune  # noqa: E402
from hfprune.trainer import PruningTrainer, RecoveryConfig, RecoveryTrainer  # noqa: E402
from hfprune.trainer.losses import distillation_loss  # noqa: E402
from hfprune.trainer.recovery.teacher import Distiller, default_layer_map  # noqa: E402

V, L = 100, 16


def llama(hidden: int = 48, seed: int = 0, vocab: int = V) -> T.LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                        intermediate_size=64, vocab_size=vocab, head_dim=8, max_position_embeddings=64,
                        initializer_range=0.2)  # peaked outputs: distillation has something to match
    return T.LlamaForCausalLM(cfg).eval()


def rows(n: int = 32, seed: int = 1) -> list[dict]:
    """Token rows with a learnable pattern (each token followed by token + 1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in torch.randint(0, V - L, (n,), generator=g).tolist():
        ids = list(range(start, start + L))
        out.append({"input_ids": ids, "labels": ids, "attention_mask": [1] * L})
    return out


def pruned_pair() -> tuple[T.LlamaForCausalLM, object]:
    """(dense teacher, PruningResult of a copy with half the FFN neurons removed)."""
    dense = llama()
    result = prune(copy.deepcopy(dense), PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5),
                   progress=False)
    return dense, result


def targs(tmp_path, **kw) -> T.TrainingArguments:
    base = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, learning_rate=5e-3,
                report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, seed=0, data_seed=0,
                disable_tqdm=True, weight_decay=0.0)
    return T.TrainingArguments(**{**base, **kw})


@torch.no_grad()
def kl_to(teacher, student, batch) -> float:
    return float(distillation_loss(student(**batch).logits, teacher(**batch).logits, 1.0))


def batch(data: list[dict]) -> dict:
    return {"input_ids": torch.tensor([r["input_ids"] for r in data])}


# --- distillation ---------------------------------------------------------------------------------------------------
def test_distillation_lowers_kl_and_never_changes_the_teacher(tmp_path):
    dense, result = pruned_pair()
    snapshot = {k: v.clone() for k, v in dense.state_dict().items()}
    data = rows()
    before = kl_to(dense, result.model, batch(data[:8]))
    trainer = RecoveryTrainer(args=targs(tmp_path), pruned=result, teacher=dense, train_dataset=data,
                              recovery=RecoveryConfig(max_tokens=12 * 4 * L, distillation_weight=1.0))
    trainer.train()
    after = kl_to(dense, trainer.model.eval(), batch(data[:8]))
    assert after < 0.7 * before
    assert trainer.teacher is dense and not dense.training
    assert all(p.grad is None and not p.requires_grad for p in dense.parameters())
    assert all(torch.equal(v, snapshot[k]) for k, v in dense.state_dict().items())
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in dense.parameters()}
    assert not any(id(p) in trainer.optimizer.state for p in dense.parameters())
    assert trainer.state.global_step == 12 and trainer.tokens_trained == 12 * 4 * L


@pytest.mark.parametrize("weights", [{"distillation_weight": 1.0}, {"hidden_weight": 1.0},
                                     {"attention_weight": 1.0}])
def test_teacher_terms_are_zero_when_student_equals_teacher(weights):
    student = llama()
    d = Distiller(student, copy.deepcopy(student), RecoveryConfig(**weights), torch.device("cpu"))
    b = batch(rows(4))
    with d.student_capture() as attn:
        out = student(**b, output_hidden_states=True)
        attn = list(attn)
    terms = d.losses(b, out, attn)
    assert terms and all(abs(float(v.detach())) < 1e-6 for v in terms.values())
    # and not zero once the student moves away from the teacher: the terms can fail
    torch.manual_seed(3)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))
    with d.student_capture() as attn:
        out = student(**b, output_hidden_states=True)
        attn = list(attn)
    assert all(float(v.detach()) > 1e-3 for v in d.losses(b, out, attn).values())


def test_smaller_student_gets_learned_projections_in_the_optimizer_and_fixed_ones_otherwise(tmp_path):
    teacher, student = llama(48), llama(24, seed=2)
    data = rows(16)
    trainer = RecoveryTrainer(model=student, args=targs(tmp_path, max_steps=2), teacher=teacher, train_dataset=data,
                              recovery=RecoveryConfig(hidden_weight=1.0))
    proj = trainer.distiller.projections
    assert proj is not None and proj[0].weight.shape == (48, 24)
    start = proj[0].weight.detach().clone()
    trainer.train()
    assert not torch.equal(start, proj[0].weight)  # trained with the student
    fixed = Distiller(llama(24, seed=2), llama(48), RecoveryConfig(hidden_weight=1.0, projection="fixed"),
                      torch.device("cpu"))
    q = fixed.fixed[0]
    assert q.shape == (24, 48) and torch.allclose(q @ q.T, torch.eye(24), atol=1e-5)


def test_pruning_trainer_distils_intermediate_states_with_gradient_checkpointing(tmp_path):
    model = llama()
    trainer = PruningTrainer(
        model=model, args=targs(tmp_path, gradient_checkpointing=True,
                                gradient_checkpointing_kwargs={"use_reentrant": False}),
        pruning_config=PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5),
        recovery=RecoveryConfig(max_tokens=3 * 4 * L, distillation_weight=0.5, hidden_weight=1.0,
                                attention_weight=1.0),
        train_dataset=rows())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(h["recovery/hidden"] > 0 and h["recovery/attention"] > 0 for h in logs)
    assert trainer.model.config.intermediate_size == 32  # compacted
    assert trainer.teacher.config.intermediate_size == 64  # the frozen copy taken before pruning


def test_token_budget_sets_max_steps_and_eval_reports_perplexity(tmp_path):
    _, result = pruned_pair()
    data = rows()
    trainer = RecoveryTrainer(args=targs(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2),
                              pruned=result, train_dataset=data, eval_dataset=data[:4],
                              recovery=RecoveryConfig(max_tokens=5 * 4 * L - 1))
    assert trainer.args.max_steps == 5  # rounded up: 4 rows of 16 tokens per optimizer step
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_perplexity"] == pytest.approx(torch.tensor(after["eval_loss"]).exp().item(), rel=1e-6)
    assert after["eval_perplexity"] < before["eval_perplexity"]
    info = trainer.recovery_info
    assert info["method"] == "finetune" and info["tokens"] == 5 * 4 * L and info["steps"] == 5
    assert set(info["evaluation"]["eval_perplexity"]) == {"before", "after"}


def test_teacher_precision_auto_is_fp32_on_cpu_and_bf16_when_asked(tmp_path):
    from hfprune.trainer.recovery.teacher import teacher_dtype

    assert teacher_dtype("auto", torch.device("cpu")) is torch.float32
    _, result = pruned_pair()
    trainer = RecoveryTrainer(args=targs(tmp_path, max_steps=2), pruned=result, teacher=llama(), train_dataset=rows(8),
                              recovery=RecoveryConfig(distillation_weight=1.0, teacher_dtype="bfloat16"))
    assert next(trainer.teacher.parameters()).dtype is torch.bfloat16
    trainer.train()  # logits compared in float32
    assert next(trainer.model.parameters()).dtype is torch.float32


# --- LoRA -----------------------------------------------------------------------------------------------------------
def test_lora_is_merged_and_the_folder_reloads_with_plain_transformers(tmp_path):
    pytest.importorskip("peft")
    dense, result = pruned_pair()
    start = {k: v.clone() for k, v in result.model.state_dict().items()}
    trainer = RecoveryTrainer(args=targs(tmp_path), pruned=result, teacher=dense, train_dataset=rows(),
                              recovery=RecoveryConfig(max_tokens=6 * 4 * L, lora_r=4, distillation_weight=0.5,
                                                      attention_weight=0.5))
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    assert all(h["recovery/attention"] > 0 for h in trainer.state.log_history if "loss" in h)  # hooks under peft
    merged = trainer.model.eval()
    assert type(merged) is T.LlamaForCausalLM and not any("lora" in n for n, _ in merged.named_modules())
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, start[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)
    out = tmp_path / "final"
    trainer.save_model(str(out))
    assert not (out / "adapter_config.json").exists()
    reloaded = T.AutoModelForCausalLM.from_pretrained(out).eval()
    x = batch(rows(2))["input_ids"]
    with torch.no_grad():
        assert torch.allclose(reloaded(x).logits, merged(x).logits, atol=1e-5)
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["recovery"]["method"] == "lora+distillation" and report["recovery"]["tokens"] == 6 * 4 * L
    card = (out / "README.md").read_text()
    assert "## Recovery" in card and "merged into the weights" in card


# --- resume ---------------------------------------------------------------------------------------------------------
class _StopAt(T.TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def test_resume_mid_recovery_gives_the_same_weights(tmp_path):
    """Smaller student (learned projections, saved in checkpoints), hidden + logit distillation, seeded."""
    def make(out, callbacks=()):
        return RecoveryTrainer(model=llama(24, seed=2), teacher=llama(48), train_dataset=rows(),
                               args=targs(tmp_path, output_dir=str(out), save_strategy="steps", save_steps=100),
                               recovery=RecoveryConfig(max_tokens=6 * 4 * L, distillation_weight=0.5,
                                                       hidden_weight=1.0), callbacks=list(callbacks))

    full = make(tmp_path / "full")
    full.train()
    cut = make(tmp_path / "cut", [_StopAt(3)])
    cut.train()
    assert cut.state.global_step == 3 and (tmp_path / "cut" / "checkpoint-3" / "hfprune_recovery.safetensors").is_file()
    resumed = make(tmp_path / "cut")
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert torch.allclose(full.distiller.projections[0].weight, resumed.distiller.projections[0].weight, atol=1e-6)


# --- bad input ------------------------------------------------------------------------------------------------------
class _Tok:
    def __init__(self, vocab: dict) -> None:
        self.vocab = vocab

    def get_vocab(self) -> dict:
        return self.vocab


def test_bad_input_fails_before_training(tmp_path):
    _, result = pruned_pair()
    data = rows(8)
    with pytest.raises(ConfigError, match="vocabulary"):
        RecoveryTrainer(args=targs(tmp_path), pruned=result, teacher=llama(vocab=120), train_dataset=data,
                        recovery=RecoveryConfig(distillation_weight=1.0))
    with pytest.raises(ConfigError, match="tokenizer"):
        RecoveryTrainer(args=targs(tmp_path), pruned=result, teacher=llama(), train_dataset=data,
                        processing_class=_Tok({"a": 0}), teacher_tokenizer=_Tok({"a": 1}),
                        recovery=RecoveryConfig(distillation_weight=1.0))
    with pytest.raises(ConfigError, match="max_tokens"):
        RecoveryConfig(max_tokens=0)
    if pytest.importorskip("peft"):
        with pytest.raises(ConfigError, match="'qkv_proj'.*names no Linear"):
            RecoveryTrainer(args=targs(tmp_path), pruned=result, train_dataset=data,
                            recovery=RecoveryConfig(lora_r=4, lora_targets=["q_proj", "qkv_proj"]))
    with pytest.raises(ConfigError, match="teacher"):
        RecoveryTrainer(args=targs(tmp_path), pruned=result, train_dataset=data,
                        recovery=RecoveryConfig(distillation_weight=1.0))
    with pytest.raises(ConfigError, match="LoRA"):
        PruningTrainer(model=llama(), args=targs(tmp_path), pruning_config=PruningConfig(granularity="neurons"),
                       train_dataset=data, recovery=RecoveryConfig(lora_r=4))
    assert default_layer_map(2, 4) == [0, 3] and default_layer_map(3, 3) == [0, 1, 2]


# --- the recipe through `hfprune run` -------------------------------------------------------------------------------
WORDS = [f"w{i}" for i in range(40)]


def _tiny_folder(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                     pad_token="</s>")
    llama(vocab=len(vocab)).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def word_file(tmp_path: Path) -> Path:
    """40 seeded lines of 20 words from `WORDS`: calibration, training and evaluation text for the recipes."""
    g = torch.Generator().manual_seed(0)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(" ".join(WORDS[i] for i in torch.randint(0, 40, (20,), generator=g).tolist())
                              for _ in range(40)))
    return text


def tiny_recipe(tmp_path: Path, shipped_name: str) -> dict:
    """A shipped recipe pointed at a tiny Llama folder and word text, at tiny sizes (output in tmp_path/out)."""
    model, text = _tiny_folder(tmp_path / "model"), word_file(tmp_path)
    shipped = yaml.safe_load(Path(__file__).resolve().parents[2].joinpath("recipes", shipped_name).read_text())
    recipe = {**shipped, "model": {"name": str(model)}, "calibration": {"data": str(text)},
              "evaluation": {"data": str(text), "max_samples": 10}, "output": {"dir": str(tmp_path / "out")}}
    if (shipped.get("evaluation") or {}).get("tasks"):  # lm-eval tasks kept, on a few documents
        recipe["evaluation"].update(tasks=shipped["evaluation"]["tasks"], limit=4)
    recipe["pruning"] = {**shipped["pruning"], "calibration": {**shipped["pruning"].get("calibration", {}),
                                                               "num_samples": 4, "seq_len": 16, "batch_size": 2}}
    recipe["recovery"] = {**shipped["recovery"], "data": str(text), "eval_data": str(text), "seq_len": 16,
                          "max_tokens": 4 * 16 * 3, "per_device_train_batch_size": 4, "eval_steps": 1}
    return recipe


@pytest.mark.parametrize("method", ["distillation", "lora"])
def test_recovery_recipe_runs_end_to_end(tmp_path, method):
    from hfprune.cli import main

    if method == "lora":
        pytest.importorskip("peft")
    recipe = tiny_recipe(tmp_path, "smollm2-prune-distill.yaml" if method == "distillation" else
                         "smollm2-prune-distill-lora.yaml")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--quiet"]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "pruning_report.json").read_text())
    rec = report["recovery"]
    assert rec["steps"] == 3 and rec["tokens"] == 3 * 4 * 16
    assert rec["method"] == method
    ppl = report["evaluation"]["perplexity"]
    assert ppl["after"] == rec["evaluation"]["perplexity"]["after"]  # the saved model's number
    if report["loader"] == "transformers":  # the LoRA recipe: uniform widths
        reloaded = T.AutoModelForCausalLM.from_pretrained(out)
        assert reloaded.config.intermediate_size < 64
    else:  # the distillation recipe ranks globally: non-uniform widths, hfprune's loader
        from hfprune import load_pruned

        reloaded = load_pruned(out)
        assert sum(layer.mlp.up_proj.out_features for layer in reloaded.model.layers) < 64 * 2
    assert "## Recovery" in (out / "README.md").read_text()


def test_a_killed_recovery_run_resumes_from_its_checkpoints_beside_the_output(tmp_path, monkeypatch, capsys):
    """Checkpoints of a recipe's recovery live beside its output, not in $TMPDIR; a re-run after a crash resumes
    from them, and a finished run removes them. The crash leaves the existing output folder as it was."""
    from hfprune.cli import main
    from tests.helpers.checks import digest

    model = _tiny_folder(tmp_path / "model")
    text = word_file(tmp_path)
    recipe = {"model": {"name": str(model)}, "calibration": {"data": str(text)},
              "pruning": {"criterion": "magnitude", "granularity": "neurons", "sparsity": 0.5},
              "recovery": {"data": str(text), "seq_len": 16, "max_tokens": 4 * 16 * 4, "per_device_train_batch_size": 4,
                           "save_strategy": "steps", "save_steps": 1, "learning_rate": 1e-3},
              "output": {"dir": str(tmp_path / "out"), "overwrite": True}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "earlier.txt").write_text("a folder the crashed run must not touch")
    before = digest(tmp_path / "out")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    calls = {"n": 0}
    real = RecoveryTrainer.training_step

    def crash_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as a kill would stop it, after two saved steps
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RecoveryTrainer, "training_step", crash_on_third)
    assert main(["run", str(path), "--quiet"]) != 0
    checkpoints = tmp_path / ".out.recover-checkpoints"
    assert (checkpoints / "checkpoint-2").is_dir()
    assert digest(tmp_path / "out") == before  # the old output folder byte-identical after the crash
    assert list((tmp_path / "tmp").iterdir()) == []  # nothing left in $TMPDIR
    monkeypatch.setattr(RecoveryTrainer, "training_step", real)
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    assert "resuming from" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "pruning_report.json").read_text())
    assert report["recovery"]["steps"] == 4
    assert not checkpoints.exists()  # a finished run keeps no checkpoints


# --- distributed ----------------------------------------------------------------------------------------------------
@pytest.mark.multiprocess
@pytest.mark.parametrize("top_k", [None, 20])
def test_distillation_under_two_processes_equals_one(tmp_path, top_k):
    """DDP (gloo, 2 processes x 4 rows) and one process (8 rows) take the same steps on the same rows: the
    distilled students agree within float tolerance; the teacher stays on each process, frozen. With a teacher
    cache, each process computes half of it and both hold all of it."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = os.path.join(root, "tests", "trainer", "recovery_ddp_run.py")
    for cmd, out, b in (([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"], "two", "4"),
                        ([sys.executable], "one", "8")):
        (tmp_path / out).mkdir()
        cache = {"HFPRUNE_CACHE": str(tmp_path / out / "cache")}  # each run computes its own cache
        done = subprocess.run(cmd + [script, str(tmp_path / out), b] + ([str(top_k)] if top_k else []),
                              env={**env, **cache}, timeout=300, capture_output=True, text=True, cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
    two, one = load_file(str(tmp_path / "two" / "student.safetensors")), load_file(str(tmp_path / "one" /
                                                                                         "student.safetensors"))
    assert int(two.pop("_steps")) == int(one.pop("_steps")) == 3
    assert int(two.pop("_cached_rows")) == int(one.pop("_cached_rows")) == (8 if top_k else -1)
    start = pruned_pair()[1].model.state_dict()
    moved = 0
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
        moved += not torch.equal(one[k], start[k])
    assert moved > 0  # training changed the student


def test_sharded_training_refused_before_work(tmp_path):
    dense, result = pruned_pair()
    args = targs(tmp_path)
    args.fsdp, args.fsdp_config = "full_shard", {}  # set after construction: TrainingArguments refuses FSDP on CPU
    with pytest.raises(ConfigError, match="DDP only"):
        RecoveryTrainer(args=args, pruned=result, teacher=dense, train_dataset=rows(8),
                        recovery=RecoveryConfig(distillation_weight=0.5))
    with pytest.raises(ConfigError, match="DDP only"):
        PruningTrainer(model=dense, args=args, train_dataset=rows(8),
                       pruning_config=PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5))
