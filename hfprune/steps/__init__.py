"""What one pruning step chains: scoring, protection, selection, masks and compaction."""
