"""Selection keeps exactly the highest scores, ties going to the lower index (the order of a stable sort)."""

import torch

from hfprune.steps.selection import _keep_top_rows, keep_top


def _stable_reference(scores: torch.Tensor, keep: int) -> torch.Tensor:
    order = torch.argsort(scores.double(), dim=1, descending=True, stable=True)
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    mask.scatter_(1, order[:, :keep], True)
    return mask


def test_keep_top_rows_matches_a_stable_sort_with_ties_and_minus_inf():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        rows, cols = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        scores = torch.randn(rows, cols, generator=g) if trial % 2 else \
            torch.randint(0, 4, (rows, cols), generator=g).float()  # many ties
        scores[0, 0] = -float("inf") if trial % 5 == 0 else scores[0, 0]
        for keep in range(cols + 1):
            assert torch.equal(_keep_top_rows(scores, keep), _stable_reference(scores, keep))
        flat_keep = rows * cols // 2
        assert torch.equal(keep_top(scores, flat_keep),
                           _stable_reference(scores.reshape(1, -1), flat_keep).view(scores.shape))


def test_global_ranking_removes_exactly_the_fraction_despite_ties():
    from hfprune import PruningConfig
    from hfprune.steps.selection import unstructured_masks

    scores = {"a": torch.tensor([[0.0, 0.0, 0.0, 0.0]]), "b": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}
    masks = unstructured_masks(scores, PruningConfig(sparsity=0.25, scope="global"), per_row=False).masks
    assert int((~masks["a"]).sum() + (~masks["b"]).sum()) == 2
    assert masks["a"].tolist() == [[True, True, False, False]] and bool(masks["b"].all())
