"""PruningTrainer: schedules, masks during training, distributed agreement, resume, bad input, a real MiniLM run."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from tests.helpers.trainer import Rows, make_trainer, tiny_bert  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from hfprune import CalibrationError, ConfigError, PruningConfig, StructureError  # noqa: E402
from hfprune.trainer import RecoveryConfig, pruning_positions, sparsity_at  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Recorder(TrainerCallback):
    """Runs after PruningCallback: records the removed fraction and checks masked entries are exactly zero."""

    def __init__(self):
        self.trainer = None
        self.fractions = {}
        self.violations = []

    def _check(self, state):
        for p, drop in self.trainer.pruning_masks.dropped:
            if (p.detach()[drop] != 0).any():
                self.violations.append(state.global_step)

    def on_optimizer_step(self, args, state, control, **kw):
        self._check(state)

    def on_step_end(self, args, state, control, **kw):
        self._check(state)
        kept, total = self.trainer.pruning_masks.units()
        self.fractions[state.global_step] = 1 - kept / total


def run(tmp_path, pruning, **kw):
    rec = Recorder()
    trainer = make_trainer(str(tmp_path), pruning, callbacks=[rec], **kw)
    rec.trainer = trainer
    trainer.train()
    return trainer, rec


# --- schedules ------------------------------------------------------------------------------------------------------
def test_sparsity_formulas():
    it = PruningConfig(sparsity=0.6,
                       training={"schedule": "iterative", "start_step": 2, "end_step": 8, "pruning_steps": 3})
    assert pruning_positions(it) == [2, 5, 8]
    assert [sparsity_at(t, it) for t in (1, 2, 4, 5, 7, 8, 20)] == pytest.approx([0, .2, .2, .4, .4, .6, .6])
    cu = PruningConfig(sparsity=0.8,
                       training={"schedule": "cubic", "start_step": 0, "end_step": 10, "pruning_steps": 5})
    assert pruning_positions(cu) == [2, 4, 6, 8, 10]
    for t in range(12):
        k = min(5, t // 2)
        assert sparsity_at(t, cu) == pytest.approx(0.8 + (0 - 0.8) * (1 - k * 2 / 10) ** 3)
    assert sparsity_at(0, PruningConfig(sparsity=0.3)) == 0.3


@pytest.mark.parametrize("pruning", [
    {"training": {"schedule": "one_shot"}},
    {"training": {"schedule": "iterative", "start_step": 1, "end_step": 5, "pruning_steps": 3}},
    {"training": {"schedule": "cubic", "start_step": 0, "end_step": 4, "pruning_steps": 2}},
])
def test_schedule_reaches_target_when_promised(tmp_path, pruning):
    trainer, rec = run(tmp_path, {**pruning, "training": {"keep_masks": True}}, max_steps=6)
    config = trainer.pruning_config
    for step, frac in rec.fractions.items():
        assert abs(frac - sparsity_at(step, config)) <= 1 / 64, step  # rounding to whole neurons (64 per layer)
    end = pruning_positions(config)[-1]
    assert rec.fractions[max(end, 1)] == pytest.approx(0.5)
    if end > 1:
        assert rec.fractions[end - 1] < 0.5


# --- masks during training ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("granularity,optim", [("weights", "adamw_torch"), ("neurons", "sgd"), ("neurons", "adamw_torch")])
def test_masked_weights_exactly_zero_after_every_step(tmp_path, granularity, optim):
    pruning = {"granularity": granularity, "training": {"schedule": "iterative", "start_step": 0, "end_step": 4, "pruning_steps": 3, "keep_masks": True}}
    extra = {"optim_args": "momentum=0.9"} if optim == "sgd" else {}
    trainer, rec = run(tmp_path, pruning, max_steps=6, optim=optim, **extra)
    assert trainer.pruning_masks.dropped and rec.fractions[6] == pytest.approx(0.5)
    assert rec.violations == []


def test_masks_are_monotone_and_model_compacted(tmp_path):
    history = []

    class Masks(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            history.append({k: v.clone() for k, v in trainer.pruning_masks.masks.items()})

    trainer = make_trainer(str(tmp_path), {"training": {"schedule": "cubic", "end_step": 4, "pruning_steps": 4}},
                           callbacks=[Masks()])
    trainer.train()
    for before, after in zip(history, history[1:]):
        assert all((after[k] <= before[k]).all() for k in before)
    assert trainer.model.config.intermediate_size == 32
    assert trainer.model.bert.encoder.layer[0].intermediate.dense.weight.shape == (32, 32)
    trainer.save_model(str(tmp_path / "final"))
    assert PruningConfig.from_pretrained(str(tmp_path / "final")).sparsity == 0.5
    from transformers import AutoModelForSequenceClassification
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "final"))
    batch = Rows(4)[0]
    trainer.model.eval()
    with torch.no_grad():
        a = trainer.model(input_ids=batch["input_ids"][None]).logits
        b = reloaded(input_ids=batch["input_ids"][None]).logits
    torch.testing.assert_close(a, b)


def test_regulariser_and_distillation_are_logged_and_change_the_loss(tmp_path):
    base, _ = run(tmp_path / "a", {"training": {"keep_masks": True}}, max_steps=2)
    reg, _ = run(tmp_path / "b", {"training": {"keep_masks": True, "regularizer": "group_lasso",
                                               "regularizer_weight": 0.1}},
                 max_steps=2, recovery=RecoveryConfig(distillation_weight=0.5, temperature=2.0))
    logs = [h for h in reg.state.log_history if "loss" in h]
    assert all(h["pruning/regularizer"] > 0 for h in logs)
    assert logs[0]["loss"] != [h for h in base.state.log_history if "loss" in h][0]["loss"]
    reg.save_model(str(tmp_path / "saved"))  # the distillation (RecoveryConfig) is on the card and in the rerun code
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "distillation from the unpruned model" in card
    assert "RecoveryConfig(distillation_weight=0.5, temperature=2.0)" in card and "recovery=recovery" in card


# --- distributed ----------------------------------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_two_processes_hold_the_same_masks_as_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    script = os.path.join(ROOT, "tests", "trainer", "trainer_ddp_run.py")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", script,
                    str(tmp_path / "ddp"), "8"], check=True, env=env, timeout=120, capture_output=True)
    subprocess.run([sys.executable, script, str(tmp_path / "one"), "16"], check=True, env=env, timeout=120,
                   capture_output=True)
    r0, r1, one = (load_file(str(tmp_path / d / f)) for d, f in
                   (("ddp", "masks_rank0.safetensors"), ("ddp", "masks_rank1.safetensors"),
                    ("one", "masks_rank0.safetensors")))
    assert set(r0) == set(one)
    for k in one:
        assert torch.equal(r0[k], r1[k]) and torch.equal(r0[k], one[k]), k


# --- checkpoints ----------------------------------------------------------------------------------------------------
def test_resume_continues_the_schedule_exactly(tmp_path):
    pruning = {"training": {"schedule": "cubic", "start_step": 0, "end_step": 6, "pruning_steps": 3}}
    full = make_trainer(str(tmp_path / "full"), pruning, max_steps=8)
    full.train()

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                control.should_training_stop = True

    first = make_trainer(str(tmp_path / "part"), pruning, max_steps=8, callbacks=[Stop()], save_strategy="steps",
                         save_steps=3)
    first.train()
    ckpt = tmp_path / "part" / "checkpoint-3"
    assert (ckpt / "hfprune_masks.safetensors").exists() and (ckpt / "hfprune_state.json").exists()
    resumed = make_trainer(str(tmp_path / "part"), pruning, max_steps=8)
    resumed.train(resume_from_checkpoint=str(ckpt))
    for k, m in full.pruning_masks.masks.items():
        assert torch.equal(m, resumed.pruning_masks.masks[k]), k
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


# --- bad input ------------------------------------------------------------------------------------------------------
def test_end_step_beyond_max_steps(tmp_path):
    with pytest.raises(ConfigError, match="beyond the end of training"):
        make_trainer(str(tmp_path), {"training": {"schedule": "cubic", "end_step": 10}}, max_steps=5)


@pytest.mark.parametrize("pruning", [{"training": {"schedule": "cubic"}}, {"training": {"schedule": "iterative", "start_step": 2, "end_step": 3, "pruning_steps": 4}}])
def test_schedule_without_steps(tmp_path, pruning):
    with pytest.raises(ConfigError, match="end_step"):
        make_trainer(str(tmp_path), pruning)


def test_empty_calibration_set(tmp_path):
    from hfprune.trainer import PruningTrainer
    good = make_trainer(str(tmp_path), {})
    with pytest.raises(CalibrationError, match="empty"):
        PruningTrainer(model=good.model, args=good.args, train_dataset=Rows(8), calibration_dataset=Rows(0),
                       pruning_config=good.pruning_config)


def test_family_the_config_cannot_prune(tmp_path):
    from transformers import TrainingArguments
    from hfprune.trainer import PruningTrainer

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

        def forward(self, x, labels=None):
            return {"loss": self.b(self.a(x)).pow(2).mean()}

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=2)
    with pytest.raises(StructureError, match="neurons"):
        PruningTrainer(model=Plain(), args=args, pruning_config=PruningConfig(granularity="neurons"))


# --- relative-importance regulariser -------------------------------------------------------------------------------
def naive_ri_entropy(weight, x):
    """Sum over neurons of the entropy of their mean contribution shares, from the per-sample definition."""
    x = x.reshape(-1, x.shape[-1])
    contrib = (weight[None] * x[:, None, :]).abs()  # [samples, out, in]
    share = contrib / contrib.sum(-1, keepdim=True).clamp(min=1e-30)
    rbar = share.mean(0)
    p = rbar / rbar.sum(-1, keepdim=True)
    return -torch.special.xlogy(p, p).sum()


def independent_loss(model, batch, weight):
    """Task loss + weight * RI entropy of the FFN down projections (the consumers of pruned neurons)."""
    seen = {}
    names = [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: seen.__setitem__(n, a[0].detach())) for n in names]
    try:
        task = model(**batch).loss
    finally:
        for h in handles:
            h.remove()
    return task + weight * sum(naive_ri_entropy(model.get_submodule(n).weight, seen[n]) for n in names)


def _batch(n=8, seed=3):
    rows = Rows(n, seed=seed)
    return {k: torch.stack([rows[i][k] for i in range(n)]) for k in ("input_ids", "attention_mask", "labels")}


def test_relative_importance_loss_is_task_plus_weighted_term(tmp_path):
    trainer = make_trainer(str(tmp_path), {"training": {"regularizer": "relative_importance", "regularizer_weight": 0.05}})
    model, batch = trainer.model.train(), _batch()
    mine = trainer.compute_loss(model, batch)
    mine.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    theirs = independent_loss(model, batch, 0.05)
    theirs.backward()
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    assert trainer.compute_loss(model.eval(), batch) == model(**batch).loss  # no term outside training
    model.train()(**batch)
    assert trainer._layer_inputs.inputs == {}  # forwards outside compute_loss leave no activations behind


def test_relative_importance_run_keeps_masks_and_logs_the_term(tmp_path):
    pruning = {"training": {"schedule": "iterative", "start_step": 0, "end_step": 4, "pruning_steps": 3, "keep_masks": True, "regularizer": "relative_importance", "regularizer_weight": 0.01}}
    trainer, rec = run(tmp_path, pruning, max_steps=6, optim="sgd", optim_args="momentum=0.9")
    assert rec.violations == [] and rec.fractions[6] == pytest.approx(0.5)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6 and all(h["pruning/regularizer"] > 0 for h in logs)
    model, batch = trainer.model.train(), _batch()  # masked (zero) weights carry no share
    torch.testing.assert_close(trainer.compute_loss(model, batch), independent_loss(model, batch, 0.01),
                               rtol=1e-5, atol=1e-5)


# --- calibration from collator batches ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from hfprune.examples import minilm_path
    return AutoTokenizer.from_pretrained(minilm_path())


def tok_bert(tok):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=2))


TEXTS = ["a fine film", "the plot is thin and the acting is worse", "great", "i would not watch it again, ever",
         "moving and funny at once", "dull"]


def test_calibration_from_batch_encodings(tokenizer):
    from torch.utils.data import DataLoader
    from transformers import BatchEncoding, DataCollatorWithPadding

    from hfprune import prune
    from hfprune.calibration.data import prepare_calibration

    config = PruningConfig(criterion="wanda", granularity="neurons", sparsity=0.5,
                           calibration={"num_samples": 6, "batch_size": 4})
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert isinstance(enc, BatchEncoding) and not isinstance(enc, dict)
    calib = prepare_calibration(enc, tok_bert(tokenizer), config)  # one BatchEncoding: split into batches
    assert [type(b) for b in calib.batches] == [dict, dict]
    assert [b["input_ids"].shape[0] for b in calib.batches] == [4, 2]
    assert calib.num_samples == 6 and calib.tokens == int(enc["attention_mask"].sum())
    rows = [dict(tokenizer(t)) for t in TEXTS]  # un-padded rows of different lengths
    loader = DataLoader(rows, batch_size=3, collate_fn=DataCollatorWithPadding(tokenizer))
    calib = prepare_calibration(loader, tok_bert(tokenizer), config)  # an iterable of BatchEncodings
    assert all(type(b) is dict for b in calib.batches) and calib.describe(8)["seq_len"] is None
    result = prune(tok_bert(tokenizer), config, calibration_data=loader, progress=False)
    assert result.model.config.intermediate_size == 32
    assert result.report.calibration["tokens"] == sum(len(r["input_ids"]) for r in rows)


@pytest.mark.parametrize("kind", ["datasets", "list"])
def test_default_calibration_slice_through_data_collator_with_padding(tmp_path, tokenizer, kind):
    import datasets
    from transformers import DataCollatorWithPadding, TrainingArguments

    from hfprune.trainer import PruningTrainer

    labels = [1, 0, 1, 0, 1, 0] * 2
    texts = TEXTS * 2
    ds = datasets.Dataset.from_dict({"text": texts, "label": labels}).map(
        lambda r: tokenizer(r["text"]), batched=True)  # no padding: rows of different lengths
    train = ds if kind == "datasets" else [{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"],
                                            "labels": r["label"]} for r in ds]
    config = PruningConfig(criterion="wanda", granularity="neurons", sparsity=0.5,
                           calibration={"num_samples": 8, "batch_size": 4})
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=2, save_strategy="no",
                             per_device_train_batch_size=4, disable_tqdm=True)
    trainer = PruningTrainer(model=tok_bert(tokenizer), args=args, train_dataset=train, pruning_config=config,
                             data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    calib = trainer.pruning_masks.pruner.calibration
    assert calib.num_samples == 8 and [type(b) for b in calib.batches] == [dict, dict]
    assert {b["input_ids"].shape[1] for b in calib.batches} == {
        max(len(ds[i]["input_ids"]) for i in range(j, j + 4)) for j in (0, 4)}  # padded per batch
    assert "text" not in calib.batches[0]
    trainer.train()
    assert trainer.model.config.intermediate_size == 32


# --- saving and pushing ---------------------------------------------------------------------------------------------
def test_evaluation_goes_into_report_and_card(tmp_path):
    from huggingface_hub import ModelCard
    from hfprune.report.pruning_report import PruningReport

    trainer = make_trainer(str(tmp_path / "run"), {"training": {"schedule": "one_shot"}}, max_steps=4)
    held_out = Rows(32, seed=1)
    before = trainer.evaluate(eval_dataset=held_out)["eval_loss"]
    trainer.train()
    after = trainer.evaluate(eval_dataset=held_out)["eval_loss"]
    trainer.save_model(str(tmp_path / "final"))
    report = PruningReport.load(str(tmp_path / "final"))
    assert report.evaluation["eval_loss"] == {"before": before, "after": after}
    assert not any(k.endswith(("_runtime", "_per_second")) for k in report.evaluation)
    card = ModelCard.load(str(tmp_path / "final" / "README.md"))
    assert "## Evaluation" in card.text and "eval_loss" in card.text
    assert card.data.eval_results[0].metric_value == after


@pytest.mark.parametrize("scope", ["local", "global"])
def test_save_model_writes_config_report_and_card(tmp_path, scope):
    import json

    import hfprune
    from huggingface_hub import ModelCard
    from hfprune.report.measure import count_params
    from hfprune.report.pruning_report import PruningReport

    trainer = make_trainer(str(tmp_path / "run"), {"scope": scope, "training": {"schedule": "iterative", "end_step": 3, "pruning_steps": 2}}, max_steps=4)
    trainer.train()
    folder = str(tmp_path / "final")
    trainer.save_model(folder)
    assert {"pruning_config.json", "pruning_report.json", "README.md", "kept_units.png", "config.json",
            "model.safetensors"} <= set(os.listdir(folder))
    saved = json.load(open(os.path.join(folder, "pruning_config.json")))
    report = PruningReport.load(folder)
    assert report.loader == saved["loader"] == ("transformers" if scope == "local" else "hfprune")
    assert saved["compacted"] and saved["training"]["global_step"] == 4
    assert report.sparsity == 0.5 and report.criterion == "wanda" and report.granularity == "neurons"
    kept = {g: int(m.sum()) for g, m in trainer.pruning_masks.masks.items()}
    assert {lr.name: lr.kept for lr in report.layers} == kept == {g: v["kept"] for g, v in saved["groups"].items()}
    assert sum(kept.values()) == 64
    assert report.params_before == count_params(tiny_bert())[0]
    assert report.params_after == count_params(trainer.model)[0] < report.params_before
    assert report.macs_after < report.macs_before and report.calibration["source"] == "data"
    assert {"calibration", "scoring", "selection", "training", "compaction"} <= set(report.timings)
    loaded = (AutoModelForSequenceClassification.from_pretrained(folder) if report.loader == "transformers"
              else hfprune.load_pruned(folder)).eval()
    batch = _batch(4)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=batch["input_ids"]).logits,
                                   trainer.model(input_ids=batch["input_ids"]).logits)
    card = ModelCard.load(os.path.join(folder, "README.md"))
    assert "hfprune" in card.data.tags and card.data.library_name == report.loader
    assert f"{report.params_after:,}" in card.text and "PruningTrainer" in card.text
    assert ("load_pruned" in card.text) == (report.loader == "hfprune")


@pytest.mark.parametrize("how", ["push_to_hub()", "save_model() with args.push_to_hub"])
def test_push_to_hub_uploads_the_hfprune_card(tmp_path, hub, how):
    import json

    from tests.helpers.hub_server import HUB_TOKEN as TOKEN

    REPO = "tester/trainer-pruned"

    auto = how != "push_to_hub()"
    trainer = make_trainer(str(tmp_path / "out"), {}, max_steps=2, hub_model_id=REPO, hub_token=TOKEN,
                           push_to_hub=auto)
    trainer.train()
    trainer.save_model() if auto else trainer.push_to_hub()
    assert hub.repos[REPO].messages[hub.repos[REPO].branches["main"]] == ("Model save" if auto else "End of training")
    files = hub.files(REPO)
    assert {"config.json", "model.safetensors", "pruning_config.json", "pruning_report.json", "README.md",
            "kept_units.png"} <= set(files)
    card = files["README.md"].decode()
    assert "pruned with [hfprune]" in card and f'from_pretrained("{REPO}")' in card and "PruningTrainer" in card
    assert json.loads(files["pruning_report.json"]) == trainer.pruning_report.to_dict()
    assert hub.unknown == []
    loaded = AutoModelForSequenceClassification.from_pretrained(REPO).eval()
    assert loaded.config.intermediate_size == 32


# --- real model -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_fine_tuning_recovers_accuracy(tmp_path):
    """Dense fine-tune on 100 sentences, then 50% of FFN neurons pruned (magnitude): accuracy on the 100 held-out
    sentences without fine-tuning vs with PruningTrainer's fine-tuning. Everything is seeded, the classifier head
    included (it is initialised at load time, so the seed is set before loading)."""
    import copy

    from transformers import Trainer, TrainingArguments, set_seed

    from hfprune import prune
    from hfprune.examples import load_minilm, polarity_sentences
    from hfprune.trainer import PruningTrainer

    set_seed(0)
    texts, labels = polarity_sentences()
    model, tok = load_minilm("AutoModelForSequenceClassification", num_labels=2)
    enc = tok(texts, truncation=True, max_length=48, padding="max_length", return_tensors="pt")
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": torch.tensor(labels[i])} for i in range(len(texts))]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    train, test = [rows[i] for i in order[:100]], [rows[i] for i in order[100:]]

    def accuracy(m):
        m.eval()
        with torch.no_grad():
            logits = m(input_ids=torch.stack([r["input_ids"] for r in test]),
                       attention_mask=torch.stack([r["attention_mask"] for r in test])).logits
        return (logits.argmax(-1) == torch.stack([r["labels"] for r in test])).float().mean().item()

    def args(out, steps, lr):
        return TrainingArguments(output_dir=str(tmp_path / out), report_to=[], use_cpu=True, max_steps=steps,
                                 per_device_train_batch_size=16, learning_rate=lr, save_strategy="no", seed=0,
                                 disable_tqdm=True)

    Trainer(model=model, args=args("dense", 50, 1e-4), train_dataset=train).train()
    dense = accuracy(model)
    config = PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5)
    without = accuracy(prune(copy.deepcopy(model), config, progress=False).model)
    trainer = PruningTrainer(model=model, args=args("pruned", 30, 5e-5), train_dataset=train, pruning_config=config)
    trainer.train()
    with_ft = accuracy(trainer.model)
    print(f"MiniLM polarity held-out accuracy (100 sentences): dense {dense:.3f}, 50% FFN neurons pruned without "
          f"fine-tuning {without:.3f}, with fine-tuning {with_ft:.3f}")
    assert trainer.model.config.intermediate_size == 768
    assert with_ft > without
