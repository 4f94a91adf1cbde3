"""toy_pref.critique: the gold rule read out as good and poor word spans and a sentence."""

import random

from tokalign.data import toy_pref
from tokalign.data.toy_pref import critique, gold_reward

PROMPT = "Tell me about the garden."


def _words(response: str, spans) -> list[str]:
    return [response[s:e] for s, e in spans]


def test_a_perfect_note_has_only_good_words():
    response = "the garden is bright and calm . it is very kind ."
    assert gold_reward(PROMPT, response) == 4.0
    c = critique(PROMPT, response)
    assert _words(response, c["good_words"]) == ["garden", "bright", "calm", "kind"]
    assert c["poor_words"] == []
    assert "pleasant" in c["text"] and "names the topic" in c["text"]


def test_each_rule_of_the_gold_reward_marks_its_words_poor():
    unpleasant = "the garden is dull and calm ."
    assert _words(unpleasant, critique(PROMPT, unpleasant)["poor_words"]) == ["dull"]
    repeated = "the garden is calm and calm . it is very old ."
    c = critique(PROMPT, repeated)
    assert c["poor_words"] == [(23, 27)] and "'calm' is used again" in c["text"]  # the second 'calm' only
    dense = "the garden is bright calm kind warm ."  # 8 words: past 8/3 adjectives, the rest is too many
    assert _words(dense, critique(PROMPT, dense)["poor_words"]) == ["kind", "warm"]
    long = "the garden is calm . " + "we saw a big day . " * 5
    c = critique(PROMPT, long)
    words = long.split()
    words = [w for w in words if w != "."]
    assert _words(long, c["poor_words"])[-(len(words) - toy_pref.MAX_WORDS) :] == words[toy_pref.MAX_WORDS :]
    assert c["text"].count("too long") == 1
    off_topic = "the city is calm ."
    assert "does not name the topic" in critique(PROMPT, off_topic)["text"]
    assert "too short" in critique(PROMPT, "calm")["text"]


def test_only_the_first_three_distinct_pleasant_words_are_good():
    response = "the garden is bright and calm . it is kind . people say it is warm ."
    good = _words(response, critique(PROMPT, response)["good_words"])
    assert good == ["garden", "bright", "calm", "kind"]  # 'warm' pays nothing past SENTIMENT_CAP


def test_spans_are_ordered_disjoint_words_and_agree_with_the_gold_reward():
    rng = random.Random(0)
    for _ in range(300):
        prompt = toy_pref.make_prompt(rng)
        response = toy_pref.make_response(rng, prompt)
        if rng.random() < 0.3:  # stuff some notes so that every rule fires
            response += " " + " ".join(rng.choices(toy_pref.POSITIVE + toy_pref.NEGATIVE, k=rng.randint(1, 20)))
        c = critique(prompt, response)
        assert c == critique(prompt, response)
        spans = sorted(c["good_words"] + c["poor_words"])
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        for word in _words(response, spans):
            assert word.isalpha() and word in toy_pref.VOCABULARY
        words = toy_pref._words(response)
        if not c["poor_words"] and len(words) >= toy_pref.MIN_WORDS:
            assert gold_reward(prompt, response) == len(c["good_words"])
        negatives = [w for w in _words(response, c["poor_words"]) if w in toy_pref.NEGATIVE]
        assert set(negatives) == set(words) & set(toy_pref.NEGATIVE)
