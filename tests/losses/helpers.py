"""Small tensor builders shared by the loss tests (float64, fixed seeds)."""

import torch


def make_mask(lengths: list[int], width: int, side: str = "right") -> torch.Tensor:
    """A (B, width) 0/1 response mask; "middle" puts two prompt positions before the response."""
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        start = {"right": 0, "left": width - length, "middle": 2}[side]
        mask[row, start : start + length] = 1
    return mask


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def logps(*shape: int, seed: int) -> torch.Tensor:
    """Negative per-token log-probs."""
    return -torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


def with_garbage(x: torch.Tensor, mask: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    """``x`` with ``value`` (NaN by default) wherever the mask is 0."""
    return torch.where(mask.bool(), x, torch.full_like(x, value))


def reference_token_gae(rewards, values, mask, gamma, lam):
    """Textbook token-level GAE, δ_t = r_t + γV_{t+1} − V_t, over each row's valid tokens."""
    advantages, returns = torch.zeros_like(rewards), torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        positions = mask[b].nonzero().flatten().tolist()
        running, next_value = 0.0, 0.0
        for t in reversed(positions):
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            advantages[b, t], returns[b, t] = running, running + values[b, t]
            next_value = values[b, t]
    return advantages, returns
