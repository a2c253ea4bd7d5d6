"""The demo dataset: SYNTHETIC review sentences, generated from templates, labelled by construction.

It exists so `bitune run` works offline out of the box and so the benchmark has a task where
bottom-layer fine-tuning visibly matters. Sentiment words appear in both classes: the label hangs on
negation ("not bad at all"), contrast ("I expected to hate it, but it was great") and hedges
("hardly worth it"), which a linear head on frozen, mean-pooled features only partly resolves,
while fine-tuning the lower layers lets the encoder learn the composition. It is not real data and
says nothing about real-world accuracy.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

import pandas as pd

NEGATIVE, POSITIVE = "negative", "positive"
DEMO_FILE = "demo.csv"
# Written next to demo.csv and versioned with it: it is how a later run knows that the data version
# it would replace is the synthetic demo and not the user's data. Hidden, so readers skip it.
DEMO_MARKER = ".bitune-demo.json"

ITEMS = (
    "movie", "film", "sequel", "documentary", "thriller", "comedy", "series finale", "soundtrack",
    "animated feature", "horror flick", "biopic", "remake", "blender", "phone case", "vacuum",
    "coffee maker", "backpack", "keyboard", "desk lamp", "air fryer", "tent", "jacket", "charger",
    "speaker", "mattress", "kettle", "monitor", "novel", "board game", "video game", "printer", "toaster",
)  # fmt: skip
GOOD = (
    "good", "great", "excellent", "wonderful", "fantastic", "enjoyable", "impressive", "solid",
    "delightful", "brilliant", "superb", "well made", "a joy", "fun", "lovely", "worth the money",
)  # fmt: skip
BAD = (
    "bad", "terrible", "awful", "disappointing", "boring", "poor", "dreadful", "cheap", "useless",
    "a mess", "a letdown", "mediocre", "flimsy", "painful", "annoying", "a waste of money",
)  # fmt: skip
LIKE = (("loved", "love"), ("liked", "like"), ("enjoyed", "enjoy"), ("adored", "adore"))
DISLIKE = (("hated", "hate"), ("disliked", "dislike"), ("regretted", "regret"), ("loathed", "loathe"))
WORTH = {
    POSITIVE: ("well", "totally", "definitely", "absolutely"),
    NEGATIVE: ("hardly", "not", "barely", "never"),
}
OPENERS = ("", "Honestly, ", "To be fair, ", "Well, ", "After a week, ", "In short, ", "Overall, ", "So, ")
CLOSERS = (
    "", " Just my two cents.", " That's my take.", " Your mileage may vary.", " Tried it last month.",
    " Four of us tried it.", " Make of that what you will.", " End of review.",
)  # fmt: skip

Template = Callable[[random.Random, str, str], str]


def _words(rng: random.Random, polarity: str) -> str:
    return rng.choice(GOOD if polarity == POSITIVE else BAD)


def _flip(label: str) -> str:
    return NEGATIVE if label == POSITIVE else POSITIVE


def _plain(rng: random.Random, item: str, label: str) -> str:
    return f"The {item} was {_words(rng, label)}."


def _found(rng: random.Random, item: str, label: str) -> str:
    return f"I found the {item} {_words(rng, label)}."


def _not_at_all(rng: random.Random, item: str, label: str) -> str:
    return f"The {item} was not {_words(rng, _flip(label))} at all."


def _would_not_call(rng: random.Random, item: str, label: str) -> str:
    return f"I would not call the {item} {_words(rng, _flip(label))}."


def _hardly(rng: random.Random, item: str, label: str) -> str:
    return f"The {item} was hardly {_words(rng, _flip(label))}."


def _nobody(rng: random.Random, item: str, label: str) -> str:
    return f"Nobody could say the {item} was {_words(rng, _flip(label))}."


def _expected(rng: random.Random, item: str, label: str) -> str:
    expectation = rng.choice(("hate", "love", "like", "dislike"))
    return f"I expected to {expectation} the {item}, but it was {_words(rng, label)}."


def _reviews_said(rng: random.Random, item: str, label: str) -> str:
    said, thought = _words(rng, _flip(label)), _words(rng, label)
    return f"The reviews called the {item} {said}, but I thought it was {thought}."


def _at_first(rng: random.Random, item: str, label: str) -> str:
    return f"At first the {item} seemed {_words(rng, _flip(label))}; in the end it was {_words(rng, label)}."


def _although(rng: random.Random, item: str, label: str) -> str:
    return f"Although the {item} looked {_words(rng, _flip(label))}, it turned out {_words(rng, label)}."


def _verb(rng: random.Random, item: str, label: str) -> str:
    past, _ = rng.choice(LIKE if label == POSITIVE else DISLIKE)
    return f"I {past} the {item}."


def _did_not(rng: random.Random, item: str, label: str) -> str:
    _, base = rng.choice(DISLIKE if label == POSITIVE else LIKE)
    return f"I did not {base} the {item}."


def _worth(rng: random.Random, item: str, label: str) -> str:
    return f"The {item} was {rng.choice(WORTH[label])} worth it."


TEMPLATES: tuple[Template, ...] = (
    _plain, _found, _not_at_all, _would_not_call, _hardly, _nobody, _expected, _reviews_said,
    _at_first, _although, _verb, _did_not, _worth,
)  # fmt: skip


def _sentence(rng: random.Random, label: str) -> str:
    core = rng.choice(TEMPLATES)(rng, rng.choice(ITEMS), label)
    opener = rng.choice(OPENERS)
    if opener and not core.startswith("I "):
        core = core[0].lower() + core[1:]
    return f"{opener}{core}{rng.choice(CLOSERS)}"


def make_demo_frame(rows: int, seed: int) -> pd.DataFrame:
    """`rows` unique synthetic reviews, labels 'negative'/'positive' balanced (±1), same args same frame."""
    if rows < 2:
        raise ValueError(f"rows must be at least 2, got {rows}")
    rng = random.Random(seed)  # random.Random(int) is stable across Python versions and platforms
    wanted = {POSITIVE: rows // 2, NEGATIVE: rows - rows // 2}
    seen: dict[str, str] = {}
    counts = {POSITIVE: 0, NEGATIVE: 0}
    while counts != wanted:
        label = POSITIVE if counts[POSITIVE] < wanted[POSITIVE] else NEGATIVE
        text = _sentence(rng, label)
        if text not in seen:  # labels follow from the text, so an unseen text never conflicts
            seen[text] = label
            counts[label] += 1
    pairs = list(seen.items())
    rng.shuffle(pairs)
    return pd.DataFrame(pairs, columns=["text", "label"])


def demo_files(rows: int, seed: int) -> dict[str, bytes]:
    """The demo as it goes into data/: demo.csv and the marker naming it synthetic (with its hash)."""
    content = make_demo_frame(rows, seed).to_csv(index=False).encode("utf-8")
    marker = {
        "synthetic_demo": True,
        "generator": "bitune/data/demo.py",
        "rows": rows,
        "seed": seed,
        "sha256": {DEMO_FILE: hashlib.sha256(content).hexdigest()},
    }
    return {DEMO_FILE: content, DEMO_MARKER: (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode()}


def holds_demo(folder: Path) -> bool:
    """True when `folder` holds the demo exactly as `demo_files` wrote it: marker and unedited demo.csv.

    A folder whose demo.csv was edited, or that holds any other file besides, is the user's data.
    """
    try:
        marker = json.loads((folder / DEMO_MARKER).read_text(encoding="utf-8"))
        expected = marker["sha256"][DEMO_FILE]
        content = (folder / DEMO_FILE).read_bytes()
        others = {p.name for p in folder.iterdir()} - {DEMO_FILE, DEMO_MARKER, ".gitignore"}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (
        marker.get("synthetic_demo") is True
        and not others
        and hashlib.sha256(content).hexdigest() == expected
    )
