"""read_source on every source kind, its one-line errors, and materialise's atomic swap of data/."""

import codecs
import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import datasets
import huggingface_hub
import pandas as pd
import pytest

from bitune.data.sources import RawData, materialise, read_source, row_numbers
from bitune.errors import DataError
from bitune.params import DataParams

CSV = 'text,label\nnot bad at all,positive\n"hardly worth it, sadly",negative\nNA,negative\n'


def params(source: Path | str, **kw: object) -> DataParams:
    return DataParams(source=str(source), **kw)


def read(source: Path | str, tmp_path: Path, **kw: object) -> RawData:
    return read_source(params(source, **kw), tmp_path / "data")


def error_of(source: Path | str, tmp_path: Path, **kw: object) -> str:
    with pytest.raises(DataError) as caught:
        read(source, tmp_path, **kw)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- sources that work ---------------------------------------------------------------------------


def test_csv_keeps_text_verbatim_and_labels_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text(CSV)
    raw = read(path, tmp_path)
    assert list(raw.frames) == ["all"]
    frame = raw.frames["all"]
    assert list(frame.columns) == ["text", "label"]
    assert frame["text"].tolist() == ["not bad at all", "hardly worth it, sadly", "NA"]  # "NA" stays text
    assert raw.files == {"reviews.csv": path.read_bytes()}


def test_columns_are_renamed_and_integer_labels_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "glue.tsv"
    path.write_bytes(b'sentence\tscore\n"quoted start\t1\nplain\t0\n')
    frame = read(path, tmp_path, text_column="sentence", label_column="score").frames["all"]
    assert frame.to_dict("list") == {"text": ['"quoted start', "plain"], "label": ["1", "0"]}  # quoting=3


def test_jsonl_and_parquet_with_null_and_numeric_labels(tmp_path: Path) -> None:
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": None}, {"text": "fine", "label": 0}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")  # the null turns the labels into 1.0, nan, 0.0
    for name in ("a.jsonl", "a.parquet"):
        frame = read(tmp_path / name, tmp_path).frames["all"]
        assert frame["text"].tolist() == ["good", "bad", "fine"]
        assert frame["label"].tolist()[0::2] == ["1", "0"] and pd.isna(frame["label"][1]), name


def test_utf8_bom_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,label\nok,a\n".encode())
    assert read(path, tmp_path).frames["all"]["text"].tolist() == ["ok"]


def test_folder_of_split_files_with_dev_as_validation(tmp_path: Path) -> None:
    folder = tmp_path / "glue"
    folder.mkdir()
    for name in ("train.csv", "dev.csv", "test.csv"):
        (folder / name).write_text(f"text,label\n{name} row,x\n")
    (folder / "README.md").write_text("not data")
    raw = read(folder, tmp_path)
    assert sorted(raw.frames) == ["test", "train", "validation"]
    assert raw.frames["validation"]["text"].tolist() == ["dev.csv row"]
    assert sorted(raw.files) == ["dev.csv", "test.csv", "train.csv"]


def test_a_folder_holding_only_train_is_one_unsplit_source(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "train.csv").write_text(CSV)
    assert list(read(tmp_path / "only", tmp_path).frames) == ["all"]


def test_demo_source_writes_demo_csv_that_reads_back_identically(tmp_path: Path) -> None:
    raw = read_source(DataParams(demo_rows=60), tmp_path / "data")
    assert list(raw.files) == ["demo.csv"] and len(raw.frames["all"]) == 60
    materialise(raw, tmp_path / "data")
    again = read_source(DataParams(source="data"), tmp_path / "data")
    pd.testing.assert_frame_equal(again.frames["all"], raw.frames["all"])


FORMATS = ["r.csv", "r.tsv", "r.jsonl", "r.parquet", "folder"]


def write_source(source: Path, frame: pd.DataFrame) -> None:
    """`frame` as the source file `source` names (a folder: train.csv and val.csv)."""
    if source.suffix == "":
        source.mkdir()
        frame.to_csv(source / "train.csv", index=False)
        frame.iloc[::-1].to_csv(source / "val.csv", index=False)
    elif source.suffix == ".csv":
        frame.to_csv(source, index=False)
    elif source.suffix == ".tsv":
        frame.to_csv(source, sep="\t", index=False, quoting=3)
    elif source.suffix == ".jsonl":
        frame.to_json(source, orient="records", lines=True)
    else:
        frame.to_parquet(source)


@pytest.mark.parametrize("name", FORMATS)
def test_files_with_text_and_label_columns_are_versioned_byte_identical(tmp_path: Path, name: str) -> None:
    source = tmp_path / name
    frame = pd.DataFrame({"text": ["good, really", "bad"], "label": ["5", "1"], "id": ["a", "b"]})
    write_source(source, frame)
    raw = read(source, tmp_path)
    written = materialise(raw, tmp_path / "data")
    assert {p.name: p.read_bytes() for p in written} == raw.files
    originals = sorted(source.iterdir()) if source.is_dir() else [source]
    assert {p.name: p.read_bytes() for p in originals} == raw.files  # the user's bytes, extra column too
    again = read_source(DataParams(source="data"), tmp_path / "data")
    assert again.frames.keys() == raw.frames.keys()
    for split in raw.frames:
        pd.testing.assert_frame_equal(again.frames[split], raw.frames[split])


@pytest.mark.parametrize("name", FORMATS)
def test_other_columns_are_stored_as_text_and_label_and_read_back_with_any_column_params(
    tmp_path: Path, name: str
) -> None:
    """data/ is bitune's store: after `--data r.csv --set data.text_column=review`, a plain run reads it."""
    tsv = name.endswith(".tsv")  # a TSV field holds no tab or newline (it is read unquoted)
    texts = [
        "good, really",
        ' "quoted" start ',
        "NA",
        "caf\u00e9 / na\u00efve",
        "two lines" if tsv else "two\nlines",
    ]
    frame = pd.DataFrame({"review": texts, "stars": ["5", "1", "3", "null", "2"], "text": ["x"] * 5})
    source = tmp_path / name
    write_source(source, frame)
    kw = {"text_column": "review", "label_column": "stars"}
    raw = read(source, tmp_path, **kw)
    assert raw.frames[next(iter(raw.frames))]["text"].tolist()[: len(texts)] in (texts, texts[::-1])
    written = materialise(raw, tmp_path / "data")
    originals = sorted(source.iterdir()) if source.is_dir() else [source]
    assert sorted(p.name for p in written) == sorted(p.name for p in originals)  # same names and formats
    for params_now in (DataParams(source="data"), DataParams(source="data", **kw)):
        again = read_source(params_now, tmp_path / "data")
        assert again.frames.keys() == raw.frames.keys()
        for split in raw.frames:
            pd.testing.assert_frame_equal(again.frames[split], raw.frames[split])
    assert read(source, tmp_path, **kw).files == raw.files  # the same source, the same data version


def test_a_data_folder_the_user_manages_is_read_by_the_configured_columns_first(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "r.csv").write_text("review,stars,text,label\ngood,5,other,x\n")
    custom = read_source(DataParams(source="data", text_column="review", label_column="stars"), data_dir)
    assert custom.frames["all"].to_dict("list") == {"text": ["good"], "label": ["5"]}
    assert read_source(DataParams(source="data"), data_dir).frames["all"]["text"].tolist() == ["other"]
    (data_dir / "r.csv").write_text("review,stars\ngood,5\n")  # neither configured nor stored names
    message = error_of("data", tmp_path)
    assert message.startswith("r.csv: no column 'text' (data.text_column) and 'label' (data.label_column)")
    assert "columns found: review, stars" in message


def test_hf_source_maps_class_ids_to_names_and_drops_an_unlabelled_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A local folder is a valid load_dataset id: this exercises the real datasets path, offline.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    hub = tmp_path / "hub"
    hub.mkdir()
    for split, labels in (("train", [0, 1, 1]), ("validation", [1, 0, 0]), ("test", [-1, -1, -1])):
        rows = {"sentence": [f"{split} {i}" for i in range(3)], "label": labels}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(hub / f"{split}.parquet"))
    raw = read(f"hf:{hub}", tmp_path, text_column="sentence")
    assert sorted(raw.frames) == ["train", "validation"]
    assert raw.frames["train"]["label"].tolist() == ["neg", "pos", "pos"]
    assert row_numbers(raw.frames, "train").tolist() == [1, 2, 3]  # no lines: counted from 1
    assert sorted(raw.files) == ["train.parquet", "validation.parquet"]
    materialise(raw, tmp_path / "data")
    for data in (DataParams(source="data", text_column="sentence"), DataParams(source="data")):
        again = read_source(data, tmp_path / "data")
        pd.testing.assert_frame_equal(again.frames["train"], raw.frames["train"])
    assert pd.read_parquet(tmp_path / "data" / "train.parquet").columns.tolist() == ["text", "label"]


# --- bad inputs: one DataError, one line, naming the file / column -----------------------------


def test_missing_file_names_the_path_and_the_choices(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nope.csv", tmp_path)
    assert "nope.csv" in message and "file not found" in message and "'demo'" in message


def test_unsupported_extension(tmp_path: Path) -> None:
    (tmp_path / "reviews.xlsx").write_bytes(b"PK\x03\x04")
    message = error_of(tmp_path / "reviews.xlsx", tmp_path)
    assert "reviews.xlsx" in message and "'.xlsx'" in message and ".csv" in message


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "empty.csv").write_bytes(content)
    assert "empty.csv: empty file" in error_of(tmp_path / "empty.csv", tmp_path)


def test_not_utf8_names_file_line_and_suggests_reencoding(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes("text,label\nok,a\ncaf\u00e9,b\n".encode("latin-1"))
    message = error_of(tmp_path / "latin.csv", tmp_path)
    assert (
        "latin.csv" in message and "not UTF-8" in message and "line 3" in message and "re-encode" in message
    )


def test_latin1_keeps_the_latin1_advice(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes("text,label\nok,a\ncaf\u00e9,b\n".encode("latin-1"))
    assert error_of(tmp_path / "latin.csv", tmp_path) == (
        "latin.csv: not UTF-8 (byte 0xe9 on line 3); re-encode it, e.g. "
        "`iconv -f latin1 -t utf-8 latin.csv > utf8-latin.csv`"
    )


WIDE = [  # (how the file was saved, its bytes from str, the encoding the advice names)
    ("utf-16-le with BOM", lambda t: codecs.BOM_UTF16_LE + t.encode("utf-16-le"), "utf-16"),
    ("utf-16-be with BOM", lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"), "utf-16"),
    ("utf-16-le, no BOM", lambda t: t.encode("utf-16-le"), "utf-16le"),
    ("utf-16-be, no BOM", lambda t: t.encode("utf-16-be"), "utf-16be"),
    ("utf-32 with BOM", lambda t: t.encode("utf-32"), "utf-32"),
]


@pytest.mark.parametrize(("saved", "encode", "encoding"), WIDE, ids=[w[0] for w in WIDE])
def test_utf16_and_utf32_get_advice_that_converts_them(
    tmp_path: Path, saved: str, encode: Callable[[str], bytes], encoding: str
) -> None:
    text = CSV.replace("not bad", "pas mal caf\u00e9 \u00e0 l'ouest \u2014 \u00e7a va").replace("\n", "\r\n")
    (tmp_path / "r.csv").write_bytes(encode(text))
    message = error_of(tmp_path / "r.csv", tmp_path)
    advice = f"`iconv -f {encoding} -t utf-8 r.csv > utf8-r.csv`"
    assert message.startswith(f"r.csv: UTF-{encoding[4:6]} text (") and message.endswith(advice), message
    assert "latin1" not in message
    command = advice.strip("`")
    if Path("/usr/bin/iconv").exists():  # the advice, run as the user would
        subprocess.run(command, shell=True, cwd=tmp_path, check=True)
    else:  # the same conversion: iconv's utf-16/utf-32 read the BOM and drop it, as Python's codecs do
        raw = (tmp_path / "r.csv").read_bytes()
        (tmp_path / "utf8-r.csv").write_bytes(codecs.decode(raw, encoding).encode("utf-8"))
    assert (tmp_path / "utf8-r.csv").read_bytes() == text.encode("utf-8")  # no BOM, no NUL left
    frame = read(tmp_path / "utf8-r.csv", tmp_path).frames["all"]
    assert frame.columns.tolist() == ["text", "label"] and len(frame) == 3
    assert frame["text"][0] == "pas mal caf\u00e9 \u00e0 l'ouest \u2014 \u00e7a va at all"


def test_utf16_jsonl_gets_the_utf16_advice(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_bytes('{"text": "good", "label": "a"}\n'.encode("utf-16"))
    assert error_of(tmp_path / "r.jsonl", tmp_path).endswith(
        "`iconv -f utf-16 -t utf-8 r.jsonl > utf8-r.jsonl`"
    )


def test_missing_text_column_lists_found_columns_and_the_params_key(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("review,label\ngood,a\n")
    message = error_of(tmp_path / "r.csv", tmp_path)
    assert message.startswith("r.csv: no column 'text' (data.text_column)")
    assert "columns found: review, label" in message and "set data.text_column" in message


def test_missing_label_column_names_data_label_column(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text('{"text": "good", "stars": 5}\n')
    message = error_of(tmp_path / "r.jsonl", tmp_path, label_column="sentiment")
    assert "'sentiment' (data.label_column)" in message and "text, stars" in message


def test_same_column_for_text_and_label(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text(CSV)
    assert "data.text_column and data.label_column" in error_of(
        tmp_path / "r.csv", tmp_path, label_column="text"
    )


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    assert error_of(tmp_path / "r.jsonl", tmp_path).startswith("r.jsonl line 2: not valid JSON")


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text('["a", "x"]\n')
    assert error_of(tmp_path / "r.jsonl", tmp_path).startswith("r.jsonl line 1: a JSON list, not an object")


def test_ragged_csv_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("text,label\na,x\nb,y,extra\n")
    message = error_of(tmp_path / "r.csv", tmp_path)
    assert message.startswith("r.csv: cannot parse as CSV") and "line 3" in message


def test_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "r.parquet").write_bytes(b"this is not parquet at all")
    assert error_of(tmp_path / "r.parquet", tmp_path).startswith("r.parquet: not a readable Parquet file")


def test_split_folder_without_train(tmp_path: Path) -> None:
    for name in ("validation.csv", "test.csv"):
        (tmp_path / name).write_text(CSV)
    assert "no train.*" in error_of(tmp_path, tmp_path)


def test_split_folder_with_two_files_for_one_split(tmp_path: Path) -> None:
    for name in ("train.csv", "dev.csv", "val.csv"):
        (tmp_path / name).write_text(CSV)
    message = error_of(tmp_path, tmp_path)
    assert "dev.csv" in message and "val.csv" in message and "validation split" in message


def test_folder_with_a_stray_data_file(tmp_path: Path) -> None:
    for name in ("train.csv", "test.csv", "notes.csv"):
        (tmp_path / name).write_text(CSV)
    assert "notes.csv: several data files but this one is not a split file" in error_of(tmp_path, tmp_path)


def test_folder_without_data_files_lists_what_it_found(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "reviews.txt").write_text("x")
    assert "found: reviews.txt" in error_of(tmp_path / "in", tmp_path)


def test_data_source_with_empty_data_dir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".gitignore").write_text("*\n")
    message = error_of("data", tmp_path)
    assert "holds no data files" in message and "`bitune data checkout <md5>`" in message


def test_hf_failure_names_the_id_and_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    message = error_of("hf:nobody-here/no-such-dataset:plain", tmp_path)
    assert "'nobody-here/no-such-dataset'" in message and "network" in message


# --- materialise -----------------------------------------------------------------------------


def test_materialise_replaces_contents_but_keeps_gitignore(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "old.csv").write_text("stale")
    (data_dir / ".gitignore").write_text("/keep-me\n")
    written = materialise(RawData({}, {"new.csv": b"text,label\n"}), data_dir)
    assert written == [data_dir / "new.csv"]
    assert sorted(p.name for p in data_dir.iterdir()) == [".gitignore", "new.csv"]
    assert (data_dir / ".gitignore").read_text() == "/keep-me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging folders left behind


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o002, 0o775)])
def test_materialise_gives_data_dir_the_umasks_mode(tmp_path: Path, umask: int, mode: int) -> None:
    """As `mkdir data` would: a temporary folder's 0700 would lock teammates out of a shared project."""
    previous = os.umask(umask)
    try:
        materialise(RawData({}, {"new.csv": b"text,label\n"}), tmp_path / "data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == mode


def test_failed_materialise_leaves_data_dir_untouched(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "good.csv").write_text("keep")
    broken = RawData({}, {"a": b"file", "a/b.csv": b"cannot go under a file"})
    with pytest.raises(DataError, match="left unchanged"):
        materialise(broken, data_dir)
    assert [p.name for p in data_dir.iterdir()] == ["good.csv"]
    assert (data_dir / "good.csv").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_materialise_refuses_paths_outside_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="plain relative file name"):
        materialise(RawData({}, {"../escape.csv": b"x"}), tmp_path / "data")
    assert not (tmp_path / "escape.csv").exists()


def test_an_unreadable_file_is_a_one_line_data_error(tmp_path: Path) -> None:
    """An I/O error while reading (here /proc/self/mem, EIO at offset 0) names the file, not a traceback."""
    with pytest.raises(DataError, match=r"/proc/self/mem: cannot read it \(.+\); check that it exists"):
        read_source(params("/proc/self/mem"), tmp_path)
