"""Models: the tiny builder and loading, generation (HF or vLLM), and on-policy pairs sampled from a model."""
