"""How a saved pruned model is read back, decided at compaction from what the family's config can express."""

from __future__ import annotations

import enum


class Loader(str, enum.Enum):
    """What reads a pruned folder back, decided once at compaction."""

    TRANSFORMERS = "transformers"  # plain `from_pretrained` (the config expresses every width)
    HFPRUNE = "hfprune"  # `hfprune.load_pruned` (non-uniform widths, heads the config cannot express)
    STATE_DICT = "state_dict"  # a plain torch module: a safetensors state dict for its own class
