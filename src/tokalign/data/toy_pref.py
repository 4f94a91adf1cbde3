"""A toy preference task whose gold reward a person can read.

Prompts ask for a short note about a topic; responses are simple sentences of
adjectives. The gold reward scores a lexicon (+1 per pleasant word, -1 per
unpleasant one), adds 1 when the topic is mentioned, and subtracts 0.25 per word
beyond 16 so that length alone cannot be exploited.
"""

from __future__ import annotations

import random
import re

TOPICS = (
    "garden", "river", "city", "robot", "music", "winter", "ocean", "forest",
    "kitchen", "school", "train", "library", "mountain", "market", "festival",
    "bridge", "castle", "island", "museum", "village", "harbor", "desert",
    "meadow", "station", "lake", "theater", "farm", "valley", "tower", "park",
)
EVAL_TOPICS = TOPICS[24:]
TRAIN_TOPICS = TOPICS[:24]
TEMPLATES = (
    "Write a short note about the {topic}.",
    "Describe the {topic} in a few words.",
    "Tell me about the {topic}.",
)
POSITIVE = ("bright", "calm", "kind", "lovely", "warm", "clear", "helpful", "gentle", "fresh", "happy")
NEGATIVE = ("dull", "noisy", "rude", "cold", "dirty", "broken", "boring", "sad", "ugly", "awful")
NEUTRAL = ("big", "old", "busy", "small", "quiet", "new", "long", "open")
LEXICON = {**{w: 1.0 for w in POSITIVE}, **{w: -1.0 for w in NEGATIVE}}
TARGET_WORDS = 16
LENGTH_PENALTY = 0.25
_WORD = re.compile(r"[a-z]+")


def gold_reward(prompt: str, response: str) -> float:
    """Lexicon score + topic bonus - length penalty (see module docstring)."""
    words = _WORD.findall(response.lower())
    topic = next((t for t in TOPICS if t in prompt.lower()), None)
    score = sum(LEXICON.get(w, 0.0) for w in words)
    score += 1.0 if topic is not None and topic in words else 0.0
    return score - LENGTH_PENALTY * max(0, len(words) - TARGET_WORDS)


def make_prompt(rng: random.Random, topics=TRAIN_TOPICS) -> str:
    return rng.choice(TEMPLATES).format(topic=rng.choice(topics))


def make_response(rng: random.Random, prompt: str) -> str:
    """A response of 1-4 sentences whose adjectives lean pleasant with a random bias."""
    topic = next((t for t in TOPICS if t in prompt.lower()), "place")
    p_pos = rng.random()

    def adjective() -> str:
        u = rng.random()
        if u < 0.25:
            return rng.choice(NEUTRAL)
        return rng.choice(POSITIVE if rng.random() < p_pos else NEGATIVE)

    subject = topic if rng.random() < 0.8 else "it"
    sentences = [f"the {subject} is {adjective()} and {adjective()} ."]
    for _ in range(rng.randint(0, 3)):
        sentences.append(rng.choice((
            f"it is very {adjective()} .",
            f"people say it is {adjective()} .",
            f"we saw a {adjective()} {rng.choice(('day', 'view', 'crowd', 'sky'))} .",
        )))
    return " ".join(sentences)


def sft_rows(n: int, seed: int, topics=TRAIN_TOPICS) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = make_prompt(rng, topics)
        rows.append({"prompt": prompt, "completion": make_response(rng, prompt)})
    return rows


def preference_rows(n: int, seed: int, topics=TRAIN_TOPICS) -> list[dict]:
    """Pairs of two sampled responses, ordered by the gold reward (ties skipped)."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        prompt = make_prompt(rng, topics)
        a, b = make_response(rng, prompt), make_response(rng, prompt)
        ra, rb = gold_reward(prompt, a), gold_reward(prompt, b)
        if ra == rb:
            continue
        chosen, rejected = (a, b) if ra > rb else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def prompt_rows(n: int, seed: int, topics=TRAIN_TOPICS) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": make_prompt(rng, topics)} for _ in range(n)]
