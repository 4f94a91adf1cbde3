"""The shared machinery of token-level DPO variants: the collator, the sharded precompute, its cache and key."""

import pytest
import torch

pytest.importorskip("trl")


def test_collator_places_values_on_completion_positions_and_rejects_misaligned_ones():
    from tokalign.bases.dpo.token_level import DataCollatorForTokenPreference

    def example(prompt, chosen, rejected, stored_chosen, stored_rejected):
        e = {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}
        for src in ("ref", "guidance"):
            e[f"{src}_chosen_per_token"], e[f"{src}_rejected_per_token"] = stored_chosen, stored_rejected
        return e

    collator = DataCollatorForTokenPreference(pad_token_id=0, max_length=4, sources=("ref", "guidance"))
    # max_length 4 keeps tokens 3, 4 of the first chosen response: only their values are stored
    out = collator([example([1, 2], [3, 4, 9], [5], [3.0, 4.0], [5.0]), example([6], [7], [8, 9], [7.0], [8.0, 9.0])])
    assert out["ref_per_token"].tolist() == [[0, 3, 4], [7, 0, 0], [0, 5, 0], [8, 9, 0]]
    assert out["guidance_per_token"].tolist() == out["ref_per_token"].tolist()
    with pytest.raises(ValueError, match="do not line up"):
        collator([example([1, 2], [3, 4, 9], [5], [3.0, 4.0, 9.0], [5.0])])


def test_sharded_compute_keeps_chunk_order_in_one_process():
    from tokalign.bases.dpo.precompute import compute_sharded

    calls = []

    def compute(chunk):
        calls.append(list(chunk))
        return {"x": [torch.tensor([float(i)] * (i + 1)) for i in chunk]}

    out = compute_sharded([range(0, 2), range(2, 4), range(4, 5)], compute, lockstep=True)
    assert calls == [[0, 1], [2, 3], [4]]
    assert [row.tolist() for row in out["x"]] == [[float(i)] * (i + 1) for i in range(5)]


def test_cache_entry_is_written_once_and_reused(tmp_path):
    from tokalign.bases.dpo.precompute import cached_columns

    calls = []

    def compute():
        calls.append(1)
        return {"v": [torch.tensor([0.5, -1.25]), torch.tensor([2.0])]}

    first = cached_columns(tmp_path / "key", compute)
    again = cached_columns(tmp_path / "key", compute)
    assert len(calls) == 1 and first["v"] == again["v"] == [[0.5, -1.25], [2.0]]
    assert again.features["v"].feature.dtype == "float32"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary left behind


def test_weights_hash_follows_values_names_and_dtypes():
    from tokalign.bases.dpo.precompute import weights_hash

    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert weights_hash(a) != weights_hash(b)
    assert weights_hash(a) != weights_hash(a.to(torch.float64))
