"""The generative critic's answer: JSON spans found in the response, or a row dropped when it does not parse."""

from tokalign.methods.text2grad.critic import find_spans, parse_critique

RESPONSE = "the lake is calm and calm . it is dull ."


def test_spans_are_found_left_to_right_each_occurrence_once():
    assert find_spans(RESPONSE, ["calm", "Calm", "dull", "absent", "", 3]) == [(12, 16), (21, 25), (34, 38)]


def test_a_json_answer_becomes_a_critique():
    answer = 'Analysis first. {"textual_feedback": "too flat", "good_spans": ["calm"], "poor_spans": ["is dull"]} end'
    assert parse_critique(answer, RESPONSE) == {"text": "too flat", "good_words": [(12, 16)], "poor_words": [(31, 38)]}


def test_an_answer_without_both_span_lists_does_not_parse():
    for answer in (
        "no json here",
        '{"good_spans": ["calm"]}',
        '{"good_spans": "calm", "poor_spans": []}',
        "{not: json}",
    ):
        assert parse_critique(answer, RESPONSE) is None
