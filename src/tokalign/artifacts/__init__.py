"""What a run writes and how: atomic files, sealed checkpoints, metrics and trackers, the run-dir lock."""
