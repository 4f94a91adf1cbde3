"""The GRPO family's shared machinery: GRPO settings and TRL's trainer with token accounting."""
