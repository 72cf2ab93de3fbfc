"""Cached teacher outputs (RecoveryConfig.teacher_top_k): the top-k loss against an independent computation of its
definition, training with a full-vocabulary cache equal to live distillation, reuse from disk without a teacher
forward, padded batches, and refusals."""

from __future__ import annotations

import pytest
import torch

from hfprune import ConfigError
from hfprune.errors import TrainingError
from hfprune.trainer import RecoveryConfig, RecoveryTrainer
from hfprune.trainer.losses import distillation_loss, top_k_distillation_loss
from hfprune.trainer.recovery.teacher_cache import TeacherCache, row_tokens
from tests.trainer.test_recovery import L, V, pruned_pair, rows, targs


@pytest.fixture(autouse=True)
def _cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HFPRUNE_CACHE", str(tmp_path / "cache"))


def _top_k(teacher_logits: torch.Tensor, k: int, temperature: float):
    lp = torch.log_softmax(teacher_logits / temperature, dim=-1)
    top, ids = lp.topk(k, dim=-1)
    tail = lp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return top, ids, tail


def test_full_vocabulary_cache_gives_the_live_loss():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, V, generator=g), torch.randn(3, 7, V, generator=g) * 3
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    for temperature in (1.0, 2.0):
        top, ids, tail = _top_k(t, V, temperature)
        torch.testing.assert_close(top_k_distillation_loss(s, top, ids, tail, temperature, mask),
                                   distillation_loss(s, t, temperature, mask), rtol=1e-5, atol=1e-6)


def test_top_k_loss_is_the_kl_of_the_grouped_distributions():
    """Independent computation: probabilities in float64, the k tokens and one 'rest' outcome per position, KL summed
    by hand; it never exceeds the full KL (grouping outcomes cannot increase a KL divergence)."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, V, generator=g), torch.randn(2, 5, V, generator=g) * 2
    k, temperature = 8, 1.5
    top, ids, tail = _top_k(t, k, temperature)
    got = float(top_k_distillation_loss(s, top, ids, tail, temperature))
    p = torch.softmax(t.double() / temperature, -1).reshape(-1, V)
    q = torch.softmax(s.double() / temperature, -1).reshape(-1, V)
    total = 0.0
    for row in range(p.shape[0]):
        chosen = set(ids.reshape(-1, k)[row].tolist())
        pg = [p[row, i] for i in chosen] + [sum(p[row, i] for i in range(V) if i not in chosen)]
        qg = [q[row, i] for i in chosen] + [sum(q[row, i] for i in range(V) if i not in chosen)]
        total += sum(float(a * (a / b).log()) for a, b in zip(pg, qg))
    want = total / p.shape[0] * temperature ** 2
    assert got == pytest.approx(want, rel=1e-4)
    assert got <= float(distillation_loss(s, t, temperature)) + 1e-6


def _count_calls(model) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_training_with_a_full_vocabulary_cache_equals_live_distillation(tmp_path):
    students = {}
    for top_k in (None, V):
        dense, result = pruned_pair()
        torch.manual_seed(0)
        trainer = RecoveryTrainer(args=targs(tmp_path / str(top_k)), pruned=result, teacher=dense,
                                  train_dataset=rows(),
                                  recovery=RecoveryConfig(max_tokens=6 * 4 * L, distillation_weight=1.0,
                                                          temperature=2.0, teacher_top_k=top_k))
        calls = _count_calls(dense)
        trainer.train()
        students[top_k] = trainer.model.state_dict()
        if top_k:
            assert calls[0] == 0  # no teacher forward while training
            info = trainer.recovery_info["teacher_cache"]
            distinct = len({tuple(r["input_ids"]) for r in rows()})  # repeated rows are cached once
            assert info["top_k"] == V and info["rows"] == distinct < 32 and not info["reused"]
            trainer.save_model(str(tmp_path / "saved"))
            card = (tmp_path / "saved" / "README.md").read_text()
            assert f"its {V} most likely tokens per position" in card and "hfprune extension" in card
        else:
            assert calls[0] == 6 and trainer.recovery_info["teacher_cache"] is None
    moved = 0
    for name, w in students[None].items():
        torch.testing.assert_close(students[V][name], w, rtol=1e-4, atol=1e-5, msg=name)
        moved += not torch.equal(w, pruned_pair()[1].model.state_dict()[name])
    assert moved > 0


def test_cache_is_saved_and_reused_by_a_later_run_without_a_teacher_forward(tmp_path):
    dense, result = pruned_pair()
    data = rows(12) + rows(4)  # repeated rows are cached once
    distinct = len({tuple(r["input_ids"]) for r in data})
    first = TeacherCache.for_dataset(dense, data, 10, 1.0)
    assert len(first) == distinct <= 12 and not first.reused
    files = list((tmp_path / "cache" / "teacher").glob("*.safetensors"))
    assert len(files) == 1
    calls = _count_calls(dense)
    second = TeacherCache.for_dataset(dense, data, 10, 1.0)
    assert calls[0] == 0 and second.reused and len(second) == distinct
    for key, i in first.index.items():
        j = second.index[key]
        assert torch.equal(first.top_logprobs[i], second.top_logprobs[j])
        assert torch.equal(first.top_ids[i], second.top_ids[j]) and torch.equal(first.tail[i], second.tail[j])
    TeacherCache.for_dataset(dense, data, 11, 1.0)  # another k: another entry, computed
    assert calls[0] > 0 and len(list((tmp_path / "cache" / "teacher").glob("*.safetensors"))) == 2


def test_padded_batches_find_their_rows():
    """Rows of different lengths, right- and left-padded: every real position gets the teacher's own top-k."""
    dense, _ = pruned_pair()
    data = [{"input_ids": list(range(3, 3 + n)), "attention_mask": [1] * n} for n in (5, 9)]
    cache = TeacherCache.for_dataset(dense, data, 4, 1.0, use_disk=False)
    ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    ids[0, 4:], mask[0, 4:] = torch.arange(3, 8), 1  # left padding
    ids[1], mask[1] = torch.arange(3, 12), 1
    top, top_ids, tail = cache.batch(ids, mask)
    for r, n in ((0, 5), (1, 9)):
        real = row_tokens(ids[r], mask[r])
        with torch.no_grad():
            want, want_ids, want_tail = _top_k(dense(input_ids=real[None]).logits[0], 4, 1.0)
        keep = mask[r].bool()
        torch.testing.assert_close(top[r, keep], want, rtol=1e-5, atol=1e-5)
        assert torch.equal(top_ids[r, keep], want_ids)
        torch.testing.assert_close(tail[r, keep], want_tail, rtol=1e-5, atol=1e-5)
    assert float(top[0, :4].abs().sum()) == 0.0


def test_refusals():
    with pytest.raises(ConfigError, match="logit distillation only"):
        RecoveryConfig(distillation_weight=1.0, hidden_weight=1.0, teacher_top_k=8)
    with pytest.raises(ConfigError, match="logit distillation only"):
        RecoveryConfig(teacher_top_k=8)
    with pytest.raises(ConfigError, match="teacher_top_k"):
        RecoveryConfig(distillation_weight=1.0, teacher_top_k=0)
    dense, _ = pruned_pair()
    with pytest.raises(ConfigError, match="token_type_ids"):
        TeacherCache.for_dataset(dense, [{"input_ids": [1, 2], "token_type_ids": [0, 0]}], 4, 1.0)
    cache = TeacherCache.for_dataset(dense, rows(4), 4, 1.0, use_disk=False)
    with pytest.raises(TrainingError, match="not in the teacher cache"):
        cache.batch(torch.tensor([[1, 2, 3]]), None)


def test_cache_refused_before_work_when_too_large(tmp_path, monkeypatch):
    import hfprune.trainer.recovery.teacher_cache as tc

    monkeypatch.setattr(tc, "MAX_BYTES", 1000)
    dense, result = pruned_pair()
    calls = _count_calls(dense)
    with pytest.raises(ConfigError, match="GiB of teacher outputs"):
        RecoveryTrainer(args=targs(tmp_path), pruned=result, teacher=dense, train_dataset=rows(),
                        recovery=RecoveryConfig(max_tokens=64, distillation_weight=1.0, teacher_top_k=V))
    assert calls[0] == 0


def test_loss_gradient_is_finite_for_every_k():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(1, 4, V, generator=g)
    for k in (1, 7, V):
        s = torch.randn(1, 4, V, generator=g, requires_grad=True)
        top, ids, tail = _top_k(t, k, 1.0)
        top_k_distillation_loss(s, top, ids, tail, 1.0).backward()
        assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
