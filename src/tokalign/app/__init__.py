"""The Hydra application: the method registry, config groups from the dataclasses, one validation pass,
annotated help and sweep-point names."""
