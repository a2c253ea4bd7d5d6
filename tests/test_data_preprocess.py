"""Normalisation, label map and tokenization (with its disk cache) on a tiny WordPiece tokenizer."""

from pathlib import Path

import datasets
import pandas as pd
import pytest
from transformers import BertTokenizerFast

from bitune.data.preprocess import LabelMap, normalise_texts, tokenization_key, tokenize_splits
from bitune.errors import DataError
from bitune.params import PreprocessParams

WORDS = "the movie was not bad at all but i expected to hate it great hardly worth".split()


def tokenizer(tmp_path: Path, words: list[str] = WORDS) -> BertTokenizerFast:
    vocab = tmp_path / f"vocab-{len(words)}.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *words]) + "\n")
    # transformers 5 takes the vocab file as `vocab=`; `vocab_file=` is silently ignored there.
    return BertTokenizerFast(vocab=str(vocab))


FRAMES = {
    "train": pd.DataFrame(
        {
            "text": ["The movie was  not bad at all.", "hardly worth it", "great"],
            "label": ["positive", "negative", "positive"],
        }
    ),
    "test": pd.DataFrame({"text": ["I expected to hate it, but it was great."], "label": ["positive"]}),
}
PRE = PreprocessParams(max_length=8)


def test_normalise_texts_options() -> None:
    texts = pd.Series(["  Not\tBAD \n at  all ", "ok"], index=[5, 9])
    out = normalise_texts(texts, PreprocessParams(lowercase=True))
    assert out.tolist() == ["not bad at all", "ok"] and out.index.tolist() == [5, 9]
    kept = normalise_texts(texts, PreprocessParams(strip=False, normalize_whitespace=False))
    assert kept.tolist() == texts.tolist()
    assert normalise_texts(texts, PreprocessParams(strip=False)).tolist()[0] == " Not BAD at all "


def test_label_map_sorted_by_default_or_in_the_given_order() -> None:
    found = LabelMap.from_frames(FRAMES, None)
    assert found.labels == ("negative", "positive")
    given = LabelMap.from_frames(FRAMES, ["positive", "negative"])
    assert given.id_of("positive") == 0 and given.label_of(1) == "negative"
    assert given.labels == ("positive", "negative")
    with pytest.raises(DataError, match="'neutral' is not one of"):
        found.id_of("neutral")
    with pytest.raises(DataError, match="label id 2 is out of range"):
        found.label_of(2)


def test_tokenize_truncates_without_padding_and_maps_labels(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path)
    out = tokenize_splits(FRAMES, tok, PRE, LabelMap(("negative", "positive")), None, "unused")
    assert isinstance(out, datasets.DatasetDict) and list(out) == ["train", "test"]
    train = out["train"]
    assert sorted(train.column_names) == ["attention_mask", "input_ids", "labels", "length"]
    assert train["labels"] == [1, 0, 1]
    assert train["length"] == [len(ids) for ids in train["input_ids"]] == [8, 5, 3]  # truncated, unpadded
    assert train["input_ids"][2] == tok("great")["input_ids"]
    assert tok.pad_token_id not in sum(train["input_ids"], [])
    assert out["test"]["length"] == [8]
    assert not list(tmp_path.glob("*/"))  # no cache_dir: nothing written


def test_tokenize_applies_the_normalisation(tmp_path: Path) -> None:
    words = [w.upper() for w in WORDS]  # a cased vocab: only lowercasing changes what matches
    tok = BertTokenizerFast(vocab=str(_cased(tmp_path, words)), do_lower_case=False)
    frames = {"train": pd.DataFrame({"text": ["the MOVIE"], "label": ["x"]})}
    plain = tokenize_splits(frames, tok, PRE, LabelMap(("x",)), None, "k")["train"]["input_ids"][0]
    lowered = tokenize_splits(
        frames, tok, PreprocessParams(max_length=8, lowercase=True), LabelMap(("x",)), None, "k"
    )["train"]["input_ids"][0]
    assert plain != lowered


def _cased(tmp_path: Path, words: list[str]) -> Path:
    vocab = tmp_path / "cased.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", *words]) + "\n")
    return vocab


def test_unknown_label_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'positive' is not one of"):
        tokenize_splits(FRAMES, tokenizer(tmp_path), PRE, LabelMap(("negative",)), None, "k")


def test_cache_hit_loads_from_disk_instead_of_tokenizing_again(tmp_path: Path) -> None:
    labels = LabelMap(("negative", "positive"))
    key = tokenization_key("md5-abc", "tiny", PRE)
    first = tokenize_splits(FRAMES, tokenizer(tmp_path), PRE, labels, tmp_path / "cache", key)
    assert (tmp_path / "cache" / key / "dataset_dict.json").is_file()
    assert all(
        Path(f["filename"]).is_relative_to(tmp_path / "cache" / key) for f in first["train"].cache_files
    )
    # A tokenizer with another vocab would give other ids: equal ids prove nothing was re-tokenized.
    other = tokenizer(tmp_path, list(reversed(WORDS)))
    assert other("great")["input_ids"] != tokenizer(tmp_path)("great")["input_ids"]
    second = tokenize_splits(FRAMES, other, PRE, labels, tmp_path / "cache", key)
    assert second["train"]["input_ids"] == first["train"]["input_ids"]
    assert second["test"]["labels"] == [1]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [key]  # no staging leftovers


def test_cache_entry_with_another_label_map_is_rebuilt(tmp_path: Path) -> None:
    key = tokenization_key("md5-abc", "tiny", PRE)
    tokenize_splits(FRAMES, tokenizer(tmp_path), PRE, LabelMap(("negative", "positive")), tmp_path / "c", key)
    flipped = tokenize_splits(
        FRAMES, tokenizer(tmp_path), PRE, LabelMap(("positive", "negative")), tmp_path / "c", key
    )
    assert flipped["train"]["labels"] == [0, 1, 0]
    reloaded = tokenize_splits(
        FRAMES, tokenizer(tmp_path), PRE, LabelMap(("positive", "negative")), tmp_path / "c", key
    )
    assert reloaded["train"]["labels"] == [0, 1, 0]


def test_tokenization_key_is_short_stable_and_sensitive_to_each_input() -> None:
    key = tokenization_key("v1", "tok", PRE)
    assert key == tokenization_key("v1", "tok", PreprocessParams(max_length=8))
    assert len(key) == 16 and int(key, 16) >= 0
    others = {
        tokenization_key("v2", "tok", PRE),
        tokenization_key("v1", "tok2", PRE),
        tokenization_key("v1", "tok", PreprocessParams(max_length=9)),
        tokenization_key("v1", "tok", PreprocessParams(max_length=8, lowercase=True)),
    }
    assert len(others) == 4 and key not in others


def test_tokenization_key_follows_the_model_revision() -> None:
    """Another revision may ship another tokenizer; no revision keeps the keys made before it counted."""
    key = tokenization_key("v1", "tok", PRE)
    assert tokenization_key("v1", "tok", PRE, revision=None) == key
    assert tokenization_key("v1", "tok", PRE, revision="v2") != key
    assert tokenization_key("v1", "tok", PRE, revision="v2") != tokenization_key(
        "v1", "tok", PRE, revision="v3"
    )
