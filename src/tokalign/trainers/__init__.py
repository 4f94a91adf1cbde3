"""TRL trainer subclasses that feed per-token tensors to `tokalign.losses` (imports trl: load lazily)."""
