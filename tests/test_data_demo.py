"""The synthetic demo set: deterministic, balanced, clean, and not solvable by word counts alone."""

import pandas as pd
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

from bitune.data.demo import make_demo_frame
from bitune.data.validation import validate_frames
from bitune.params import DataParams


def test_same_arguments_give_an_identical_frame_and_another_seed_does_not() -> None:
    pd.testing.assert_frame_equal(make_demo_frame(300, 7), make_demo_frame(300, 7))
    assert not make_demo_frame(300, 7)["text"].equals(make_demo_frame(300, 8)["text"])


def test_balanced_two_string_labels_exact_row_count() -> None:
    frame = make_demo_frame(601, 0)
    assert list(frame.columns) == ["text", "label"]
    assert len(frame) == 601
    counts = frame["label"].value_counts()
    assert set(counts.index) == {"negative", "positive"}
    assert abs(counts["negative"] - counts["positive"]) <= 1


def test_no_duplicate_texts_and_passes_validation_at_the_default_size() -> None:
    frame = make_demo_frame(DataParams().demo_rows, 0)
    assert frame["text"].is_unique
    report = validate_frames({"all": frame}, DataParams())
    assert report.errors == [] and report.warnings == []


def test_large_frames_stay_unique() -> None:
    frame = make_demo_frame(50_000, 3)
    assert frame["text"].is_unique and len(frame) == 50_000


def test_labels_hinge_on_negation_and_contrast_not_on_sentiment_words() -> None:
    frame = make_demo_frame(3000, 0)
    by_label = {label: " ".join(group["text"]) for label, group in frame.groupby("label")}
    for cue in (" not ", "great", "bad", "but", "hardly"):
        assert cue in by_label["positive"] and cue in by_label["negative"], cue
    assert frame["text"].str.contains("not bad at all").any()
    assert frame["text"].str.contains("hardly worth it").any()
    # A bag of words (order-blind, like a mean-pooled frozen encoder) stays far from perfect.
    bag_of_words = make_pipeline(CountVectorizer(), LogisticRegression(max_iter=2000))
    accuracy = cross_val_score(bag_of_words, frame["text"], frame["label"], cv=3).mean()
    assert 0.5 < accuracy < 0.75
