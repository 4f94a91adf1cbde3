"""Dataset loading: toy kinds, local files with column maps, clear errors for missing columns, screening."""

import json

import pytest
from omegaconf import OmegaConf

from tokalign.config import DatasetConfig
from tokalign.data.loading import load_split
from tokalign.errors import DataError


def _cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), kw)


@pytest.mark.parametrize(
    "kind,columns",
    [
        ("sft", {"prompt", "completion"}),
        ("preference", {"prompt", "chosen", "rejected"}),
        ("prompt", {"prompt"}),
    ],
)
def test_toy_pref_kinds(kind, columns):
    ds = load_split(_cfg(num_train=20), kind)
    assert len(ds) == 20 and columns <= set(ds.column_names)
    assert ds[0]["prompt"][0]["role"] == "user"


def test_toy_math_prompts_carry_answers():
    ds = load_split(_cfg(source="toy_math", num_train=10), "prompt")
    assert set(ds.column_names) == {"prompt", "answer"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_local_file_with_column_map_and_held_out_tail(tmp_path):
    rows = [{"q": f"question {i}", "good": "yes", "bad": "no"} for i in range(30)]
    cfg = _cfg(
        path=_write(tmp_path / "pairs.jsonl", rows),
        num_eval=5,
        eval_fraction=0.5,
        columns={"prompt": "q", "chosen": "good", "rejected": "bad"},
    )
    train, held = load_split(cfg, "preference", method="dpo"), load_split(cfg, "preference", "eval", method="dpo")
    assert (len(train), len(held)) == (25, 5)  # half of the rows, capped at num_eval
    assert held[0]["prompt"] == "question 25" and {"prompt", "chosen", "rejected"} <= set(train.column_names)


@pytest.mark.parametrize(
    "rows,fraction,cap,held", [(100, 0.1, 64, 10), (64, 0.1, 64, 6), (5, 0.1, 64, 1), (2, 0.9, 64, 1)]
)
def test_the_hold_out_is_a_capped_share_and_never_all(tmp_path, rows, fraction, cap, held):
    from tokalign.data.loading import load_training_rows

    cfg = _cfg(
        path=_write(tmp_path / "d.jsonl", [{"prompt": f"p{i}"} for i in range(rows)]),
        num_eval=cap,
        eval_fraction=fraction,
    )
    train, note = load_training_rows(cfg, "prompt")
    assert len(train) == rows - held and note.startswith(f"{held} of the {rows} rows of split 'train' held out")


def test_missing_columns_name_found_and_expected(tmp_path):
    cfg = _cfg(path=_write(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}] * 3))
    with pytest.raises(DataError) as err:
        load_split(cfg, "preference", method="dpo")
    msg = str(err.value)
    assert "'chosen'" in msg and "'rejected'" in msg and "found:    question, answer" in msg and "method=dpo" in msg


def test_prompt_is_extracted_from_pairs_without_one(tmp_path):
    rows = [
        {"chosen": f"\n\nHuman: hi {i}\n\nAssistant: hello", "rejected": f"\n\nHuman: hi {i}\n\nAssistant: go away"}
        for i in range(6)
    ]
    cfg = _cfg(path=_write(tmp_path / "hh.jsonl", rows), num_eval=1)
    for kind in ("preference", "prompt"):
        ds = load_split(cfg, kind)
        assert ds[0]["prompt"] == "\n\nHuman: hi 0\n\nAssistant:"
    assert load_split(cfg, "preference", method="dpo")[0]["chosen"] == " hello"


def test_screening_drops_unusable_rows_and_counts_why(tiny_model):
    import datasets

    from tokalign.data.loading import screen
    from tokalign.modeling.models import load_tokenizer

    rows = [
        {"prompt": "Say hi.", "chosen": "hi there", "rejected": "no"},
        {"prompt": "Say hi.", "chosen": "same", "rejected": "same"},
        {"prompt": "Say hi.", "chosen": "", "rejected": "no"},
        {"prompt": "word " * 200, "chosen": "ok", "rejected": "no"},
        {"prompt": "Say bye.", "chosen": "bye", "rejected": "hi"},
    ]
    kept, counts = screen(datasets.Dataset.from_list(rows), "preference", load_tokenizer(tiny_model), 64)
    assert [r["chosen"] for r in kept] == ["hi there", "bye"]
    assert counts == {"empty field": 1, "chosen == rejected": 1, "prompt >= trainer.max_length=64 tokens": 1}


def test_errors_about_a_local_file_name_the_file(tmp_path):
    path = tmp_path / "pairs_qgb.jsonl"
    path.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n")
    cfg = _cfg(source="local", path=str(path))
    with pytest.raises(DataError, match=f"dataset.path={path} cannot feed method=dpo"):
        load_split(cfg, "preference", method="dpo")
