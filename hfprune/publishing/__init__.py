"""Publishing pruned checkpoints: model cards generated from the saved report, and pushing to the Hub."""

from .card import render_model_card, write_model_card
from .push import push_to_hub

__all__ = ["push_to_hub", "render_model_card", "write_model_card"]
