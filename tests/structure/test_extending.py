"""A user adds a criterion and a model family from outside the package, and both work end to end:
prune(), save, and load_pruned (with the config expressing the widths, and without)."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from tests.helpers.models import tiny_model
from hfprune import (Adapter, Criterion, FFNSpec, PruningConfig, load_pruned, prune, register_adapter,
                     register_criterion)


# --- a criterion ------------------------------------------------------------------------------------------------
@register_criterion
class SquaredWeights(Criterion):
    """Score = W_ij^2 (a user's own criterion: data-free, unstructured and structured)."""

    name = "test_squared_weights"

    def weight_scores(self, layer, stats):
        return layer.weight_matrix().detach().float() ** 2


def test_user_criterion_through_prune():
    model = tiny_model("llama")
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith("mlp.up_proj")}
    result = prune(model, PruningConfig(criterion="test_squared_weights", sparsity=0.5, targets=["*mlp.up_proj"]),
                   progress=False)
    for name, w in weights.items():  # independent: the half of each layer with the smallest squares goes
        expected = w.pow(2) > w.pow(2).flatten().kthvalue(w.numel() // 2).values
        assert torch.equal(result.masks[name], expected), name


# --- a model family ---------------------------------------------------------------------------------------------
class TinyFFNConfig(PretrainedConfig):
    model_type = "test_tinyffn"

    def __init__(self, hidden: int = 8, inner_size: int = 16, blocks: int = 2, vocab_size: int = 20, **kw):
        self.hidden, self.inner_size, self.num_blocks, self.vocab_size = hidden, inner_size, blocks, vocab_size
        super().__init__(**kw)


class MLP(nn.Module):
    def __init__(self, config: TinyFFNConfig):
        super().__init__()
        self.fc_in, self.fc_out = nn.Linear(config.hidden, config.inner_size), nn.Linear(config.inner_size,
                                                                                        config.hidden)

    def forward(self, x):
        return x + self.fc_out(torch.relu(self.fc_in(x)))


class TinyFFNModel(PreTrainedModel):
    config_class = TinyFFNConfig
    def __init__(self, config: TinyFFNConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.blocks = nn.ModuleList(nn.Module() for _ in range(config.num_blocks))
        for b in self.blocks:
            b.mlp = MLP(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        for b in self.blocks:
            x = b.mlp(x)
        return x


AutoConfig.register("test_tinyffn", TinyFFNConfig)
AutoModel.register(TinyFFNConfig, TinyFFNModel)
register_adapter(Adapter(family="test_tinyffn", model_types=("test_tinyffn",),
                         ffn={"mlp": FFNSpec(("fc_in",), "fc_out", "inner_size")}, attention={},
                         heads_in_config=False, blocks="blocks"))


@pytest.mark.parametrize("scope, loader", [("local", "transformers"), ("global", "hfprune")])
def test_user_family_prunes_saves_and_reloads(tmp_path, scope, loader):
    torch.manual_seed(0)
    model = TinyFFNModel(TinyFFNConfig()).eval()
    with torch.no_grad():  # block 0 much weaker: a global ranking gives the blocks different widths
        model.blocks[0].mlp.fc_out.weight.mul_(0.6)
    x = torch.randint(0, 20, (4, 3))
    config = PruningConfig(criterion="wanda", granularity="neurons", sparsity=0.5, scope=scope,
                           calibration={"num_samples": 4, "seq_len": 5})
    result = prune(model, config, calibration_data=torch.randint(0, 20, (4, 5)), progress=False)
    assert result.report.loader == loader
    widths = [b.mlp.fc_in.out_features for b in model.blocks]
    assert sum(widths) == 16 and (widths == [8, 8]) == (scope == "local")
    result.save_pretrained(tmp_path / "out")
    again = load_pruned(tmp_path / "out")
    assert [b.mlp.fc_in.out_features for b in again.blocks] == widths
    torch.testing.assert_close(again(x), model(x))


# --- the import graph -------------------------------------------------------------------------------------------
def _imports(path: pathlib.Path, package: pathlib.Path) -> set[str]:
    """Modules of hfprune imported at module level (not inside functions) by ``path``."""
    here = ".".join(path.relative_to(package.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        here += ".__init__"
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = here.split(".")[: -node.level] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] == "hfprune"}
    return out


def test_no_import_circles():
    package = pathlib.Path(__file__).resolve().parents[2] / "hfprune"
    modules = {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}
    graph = {m: {t for t in _imports(p, package) if t in modules and t != m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how packages are built, not a circle
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert len(modules) > 30


def test_core_never_imports_the_examples():
    package = pathlib.Path(__file__).resolve().parents[2] / "hfprune"
    for path in package.rglob("*.py"):
        if path.parts[-2] in ("cli", "examples"):
            continue
        text = path.read_text()
        assert "examples" not in {n.split(".")[0] for n in _imported_names(text)}, path


def _imported_names(text: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.removeprefix("hfprune."))
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("hfprune.") for a in node.names}
    return out
