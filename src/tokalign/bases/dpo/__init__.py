"""The DPO family's shared machinery: DPO settings, the token-level DPO trainer, frozen scorers and
the DPO models that TGDPO, T-REG, RTO and AlignDistil build on demand."""
