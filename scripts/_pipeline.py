"""One benchmark row: `hfprune.prune` with the config's reconstruction / protection, or the engine's steps with a
reconstruction variant the config does not expose (the exact solver, dense-model inputs)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from hfprune import prune
from hfprune.config.pruning_config import PruningConfig
from hfprune.engine.pruner import Pruner
from hfprune.reconstruction.refit import reconstruct


def run(model: Any, tok: Any, cfg: PruningConfig, texts: list[str], *, reconstruction: bool = False,
        damp: float = 0.01, method: str = "obs", cg_steps: int | None = None, sequential: bool = True,
        protect: float | None = None) -> dict:
    """Prune ``model`` in place; returns timings (s), the reconstruction report (dict) and the protected units.
    ``cg_steps``: the reconstruction's conjugate-gradient steps after OBS (None: the config's default)."""
    recon = {"method": "weights", "damp": damp} if reconstruction else {"method": "none"}
    guard = {"mode": "outliers", "threshold": protect} if protect else {"mode": "none"}
    cfg = dataclasses.replace(cfg, reconstruction=dataclasses.replace(cfg.reconstruction, **recon),
                              protection=dataclasses.replace(cfg.protection, **guard))
    if reconstruction and cg_steps is not None:
        cfg = dataclasses.replace(cfg, reconstruction=dataclasses.replace(cfg.reconstruction, cg_steps=cg_steps))
    if method == "obs" and sequential:
        report = prune(model, cfg, texts, tok, progress=False).report
        return {"timings": report.timings, "reconstruction": report.reconstruction, "protected": report.protected}
    t = time.perf_counter()
    unrefit = dataclasses.replace(cfg, reconstruction=dataclasses.replace(cfg.reconstruction, method="none",
                                                                          damp=0.01, cg_steps=20))
    pruner = Pruner(model, unrefit, texts, tok, progress=False)
    pruner.step()
    rep = reconstruct(model, pruner.layers, pruner.masks, pruner.calibration.batches, groups=pruner.groups,
                      damp=damp, method=method, cg_steps=cfg.reconstruction.cg_steps if method == "obs" else 0,
                      sequential=sequential, adapter=pruner.run_step.adapter)
    pruner.compact()
    timings = {**pruner.timings, "reconstruction": rep.seconds, "total": time.perf_counter() - t}
    return {"timings": timings, "reconstruction": rep.to_dict(), "protected": {}}
