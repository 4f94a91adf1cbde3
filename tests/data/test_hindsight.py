"""Chain of Hindsight chains (docs/methods.md, CoH: invariant 5) and the toy markers."""

import pytest

from tokalign.data.hindsight import ORDERS, TOY_MARKERS, build_chain, inference_prompt

OUTPUTS = {"p": "the lake is calm .", "n": "the lake is dull ."}


def test_orders_give_the_documented_text():
    expected = {
        "p": "Q: a good note : the lake is calm .</s>",
        "n": "Q: a bad note : the lake is dull .</s>",
        "pn": "Q: a good note : the lake is calm .</s> a bad note : the lake is dull .</s>",
        "np": "Q: a bad note : the lake is dull .</s> a good note : the lake is calm .</s>",
    }
    for order in ORDERS:
        pieces = build_chain("Q:", OUTPUTS, order, TOY_MARKERS, eos="</s>")
        assert "".join(text for text, _ in pieces) == expected[order]


@pytest.mark.parametrize("order", ORDERS)
def test_markers_never_carry_loss_and_outputs_do(order):
    pieces = build_chain("Q:", OUTPUTS, order, TOY_MARKERS, eos="</s>")
    assert pieces[0] == ("Q:", False)
    markers, outputs = pieces[1::2], pieces[2::2]
    assert [m for m, _ in markers] == [" " + TOY_MARKERS[k] for k in order]
    assert not any(loss for _, loss in markers)
    assert [o for o, _ in outputs] == [" " + OUTPUTS[k] + "</s>" for k in order]
    assert all(loss for _, loss in outputs)
    last = build_chain("Q:", OUTPUTS, order, TOY_MARKERS, last_only=True)
    assert [loss for _, loss in last[2::2]] == [False] * (len(order) - 1) + [True]
    assert not last[0][1] and not any(loss for _, loss in last[1::2])


def test_unknown_order_fails_and_inference_asks_for_the_positive_output():
    with pytest.raises(ValueError, match="order"):
        build_chain("Q:", OUTPUTS, "pp", TOY_MARKERS)
    assert inference_prompt("Q:", TOY_MARKERS) == "Q: a good note :"


def test_toy_markers_round_trip_through_the_tiny_tokenizer(tiny_model):
    from tokalign.modeling.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    for marker in TOY_MARKERS.values():
        for text in (marker, " " + marker):
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text


def test_empty_markers_and_prompt_leave_the_output_alone():
    assert build_chain("", OUTPUTS, "p", {"p": "", "n": ""}, eos="</s>") == [("", False), (OUTPUTS["p"] + "</s>", True)]
    pieces = build_chain("", OUTPUTS, "np", TOY_MARKERS)
    assert "".join(t for t, _ in pieces) == "a bad note : the lake is dull . a good note : the lake is calm ."
