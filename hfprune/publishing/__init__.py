"""Publishing pruned checkpoints to the Hub (the model card itself is rendered by `hfprune.report.card`)."""

from ..report.card import render_model_card, write_model_card
from .push import push_to_hub

__all__ = ["push_to_hub", "render_model_card", "write_model_card"]
