"""PruningConfig: its fields, the rules that check them at construction, and the settling of "auto" values against a run."""
