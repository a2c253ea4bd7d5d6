"""Where data comes from: read `data.source` into frames, and write it into data/ for DVC to version.

Every source ends as frames with exactly the columns `text` and `label` (label as str) plus the
file bytes to put in data/. data/ is bitune's own store and its files always name their columns
`text` and `label`: `data.text_column`/`data.label_column` describe the source, so a plain run
after `--data reviews.csv --set data.text_column=review` reads data/ with the default params. A
local file keeps its name and format, and its original bytes when its columns already are `text`
and `label` (checking out the version then gives back what the user supplied, byte for byte);
otherwise its rows are written again under those two names. Reading data/ (source 'data') uses the
configured columns when its files have them (a data/ the user manages, with its own column names),
else `text` and `label`, and gives the same frames as the original source did.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from bitune.data.demo import make_demo_frame
from bitune.errors import DataError
from bitune.params import DataParams

SPLIT_NAMES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "dev": "validation",
    "val": "validation",
    "test": "test",
}
EXTENSIONS = (".csv", ".tsv", ".parquet", ".jsonl")
STORED_COLUMNS = ("text", "label")  # the column names of every file bitune writes into data/
KEPT_IN_DATA_DIR = (".gitignore",)


@dataclass(frozen=True)
class RawData:
    """Frames keyed 'train'/'validation'/'test' (pre-split source) or 'all'; files: data/ contents."""

    frames: dict[str, pd.DataFrame]
    files: dict[str, bytes]


class SourceFrames(dict[str, pd.DataFrame]):
    """read_source's frames by split, with the number each row goes by in messages (`row_numbers`).

    Kept beside the frames, not in their attrs: pandas carries attrs into every split and sample made
    from a frame, and into the Parquet files written from those.
    """

    def __init__(self, frames: Mapping[str, pd.DataFrame], numbers: Mapping[str, np.ndarray]) -> None:
        super().__init__(frames)
        self._numbers: dict[str, tuple[pd.DataFrame, np.ndarray]] = {
            split: (self[split], numbers[split]) for split in numbers
        }

    def numbers_of(self, split: str) -> np.ndarray | None:
        """The numbers read with frames[split]; None once that frame was replaced or changed length."""
        if split not in self._numbers:
            return None
        frame, numbers = self._numbers[split]
        return numbers if len(numbers) == len(frame) and self.get(split) is frame else None


def row_numbers(frames: Mapping[str, pd.DataFrame], split: str) -> np.ndarray:
    """The number each row of frames[split] goes by in messages, so the user finds it: the line of its
    file the row starts on (CSV and TSV, whose header is line 1; JSONL), or its place counted from 1
    where the source has no lines (Parquet, a hub dataset). Frames not from read_source (the demo's,
    a caller's own) are numbered as a CSV with a header and a row a line: the first row is row 2.
    """
    known = frames.numbers_of(split) if isinstance(frames, SourceFrames) else None
    return known if known is not None else np.arange(2, len(frames[split]) + 2)


def read_file(path: Path) -> bytes:
    """A data file's bytes; an unreadable file (permissions, I/O) is a one-line DataError, not a traceback."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"{path}: cannot read it ({exc.strerror or exc}); check that it exists and is readable "
            "by this user"
        ) from None


def read_source(data: DataParams, data_dir: Path) -> RawData:
    """Read `data.source`: 'demo', a file, a folder of split files, 'hf:<id>[:<config>]' or 'data'."""
    if data.text_column == data.label_column:
        raise DataError(
            f"data.text_column and data.label_column are both {data.text_column!r}; "
            "set them to two different columns"
        )
    source = data.source.strip()
    if source == "demo":
        frame = make_demo_frame(data.demo_rows, data.split.seed)
        demo = frame.to_csv(index=False).encode("utf-8")  # a row a line, as row_numbers assumes
        return RawData(SourceFrames({"all": frame}, {}), {"demo.csv": demo})
    if source.startswith("hf:"):
        return _read_hf(source.removeprefix("hf:"), data)
    if source == "data":
        if not data_dir.is_dir() or not _data_files(data_dir):
            raise DataError(
                f"data.source is 'data' but {data_dir}/ holds no data files; restore a data version "
                "with `bitune data checkout <md5>` (`bitune data versions` lists them), or run once "
                "with data.source=demo or a file"
            )
        return _read_folder(data_dir, data, stored=True)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path, data, stored=False)
    if not path.is_file():
        raise DataError(
            f"data.source {source!r}: file not found (looked at {path.resolve()}); give an "
            "existing file or folder, 'demo', 'hf:<dataset id>' or 'data'"
        )
    frame, content, numbers = _read_one(path, data, stored=False)
    return RawData(SourceFrames({"all": frame}, {"all": numbers}), {path.name: content})


def columns_in_store(data: DataParams, data_dir: Path) -> tuple[str, str]:
    """The (text, label) columns a read of data/ uses: the configured ones when every data file has
    them (a data/ the user manages), else `text` and `label`, as bitune writes them.

    Part of what a trained model depends on, unlike the configured names alone: after `--data
    reviews.csv --set data.text_column=review`, a plain run reads the same rows by `text`.
    """
    configured = (data.text_column, data.label_column)
    if configured == STORED_COLUMNS:
        return STORED_COLUMNS
    for path in _data_files(data_dir) if data_dir.is_dir() else []:
        columns = READERS[path.suffix.lower()](path.name, read_file(path))[0].columns
        if not all(c in columns for c in configured):
            return STORED_COLUMNS
    return configured


def materialise(raw: RawData, data_dir: Path) -> list[Path]:
    """Make data_dir hold exactly raw.files (plus its .gitignore); on any failure it is left as it was.

    Files go to a temporary sibling folder first, which then takes data_dir's place by rename, so a
    crash never leaves data/ half written for DVC to snapshot.
    """
    for name in raw.files:
        if Path(name).is_absolute() or ".." in Path(name).parts or name in KEPT_IN_DATA_DIR:
            raise DataError(f"cannot write {name!r} into {data_dir}/: use a plain relative file name")
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"{data_dir} is a file, not a folder; move it away or set data.dir elsewhere")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    suffix = secrets.token_hex(6)
    staging = data_dir.parent / f".{data_dir.name}.new-{suffix}"
    old = data_dir.parent / f".{data_dir.name}.old-{suffix}"
    try:
        staging.mkdir()  # the umask's mode, as data/ had before: mkdtemp's 0700 would lock others out
        for name, content in raw.files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(content)
        for name in KEPT_IN_DATA_DIR:
            if (data_dir / name).is_file():
                shutil.copy2(data_dir / name, staging / name)
        if data_dir.exists():
            os.rename(data_dir, old)
        try:
            os.rename(staging, data_dir)
        except OSError:
            if old.exists():
                os.rename(old, data_dir)
            raise
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"cannot write {data_dir}/ ({exc.strerror or exc}); check permissions and free disk "
            "space, it was left unchanged"
        ) from exc
    shutil.rmtree(old, ignore_errors=True)
    return sorted(data_dir / name for name in raw.files)


def _data_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")
    )


def _read_folder(folder: Path, data: DataParams, stored: bool) -> RawData:
    """Split files (train.* with validation|dev|val.* and/or test.*), or a folder holding one data file."""
    files = _data_files(folder)
    if not files:
        others = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        found = f" (found: {', '.join(others[:5])})" if others else ""
        raise DataError(
            f"{folder}/: no data file ({', '.join(EXTENSIONS)}){found}; add one or point "
            "data.source at a file"
        )
    if len(files) == 1:  # a lone train.* too: a single file is split like any other
        frame, content, numbers = _read_one(files[0], data, stored)
        return RawData(SourceFrames({"all": frame}, {"all": numbers}), {files[0].name: content})
    by_split: dict[str, Path] = {}
    for path in files:
        split = SPLIT_NAMES.get(path.stem.lower())
        if split is None:
            raise DataError(
                f"{folder}/{path.name}: several data files but this one is not a split file; "
                "name them train.*, validation.* (or dev.*/val.*) and test.*, or keep one file"
            )
        if split in by_split:
            raise DataError(
                f"{folder}/: both {by_split[split].name} and {path.name} are the {split} split; keep one"
            )
        by_split[split] = path
    if "train" not in by_split:
        raise DataError(
            f"{folder}/: split files {', '.join(p.name for p in files)} but no train.*; "
            "add train.csv (or .tsv/.parquet/.jsonl)"
        )
    read = {split: _read_one(path, data, stored) for split, path in by_split.items()}
    return RawData(
        SourceFrames(
            {split: frame for split, (frame, _, _) in read.items()},
            {split: numbers for split, (_, _, numbers) in read.items()},
        ),
        {by_split[split].name: content for split, (_, content, _) in read.items()},
    )


def _read_one(path: Path, data: DataParams, stored: bool) -> tuple[pd.DataFrame, bytes, np.ndarray]:
    """One file's frame, the bytes data/ keeps for it (`stored`: the file is in data/ already) and its
    rows' numbers (see `row_numbers`)."""
    raw = read_file(path)
    frame, numbers = _parse(path.name, raw, data, stored)
    if stored or (data.text_column, data.label_column) == STORED_COLUMNS:
        return frame, raw, numbers
    return frame, WRITERS[path.suffix.lower()](frame), numbers


def _parse(name: str, raw: bytes, data: DataParams, stored: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """File bytes -> frame with `text` and `label`, and its rows' numbers; every failure is a DataError
    naming the file."""
    suffix = Path(name).suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        raise DataError(
            f"{name}: unsupported extension {suffix or '(none)'!r}; use one of {', '.join(EXTENSIONS)}"
        )
    if not raw.strip():
        raise DataError(f"{name}: empty file; it needs a header row and data rows")
    frame, numbers = reader(name, raw)
    return _select(name, frame, data, stored), numbers


# byte-order marks, UTF-32's first: its little-endian mark starts with UTF-16's
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _wide_encoding(raw: bytes) -> tuple[str, str] | None:
    """The iconv name of the UTF-16/32 encoding `raw` is in and how that shows, or None for 8-bit text.

    Excel's and Notepad's "Unicode" saves are UTF-16 with a byte-order mark, which iconv's `utf-16`
    reads; without a mark ASCII text shows as a NUL every other byte, and iconv must be told the byte
    order. Checked before decoding: such text without a mark is valid UTF-8, full of NULs.
    """
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return encoding, f"byte-order mark {bom.hex(' ')}"
    head = raw[:256]
    pairs = len(head) // 2
    even, odd = head[0 : pairs * 2 : 2].count(0), head[1::2].count(0)
    if pairs >= 2 and odd * 2 >= pairs and even * 8 <= pairs:
        return "utf-16le", "no byte-order mark, every other byte NUL"
    if pairs >= 2 and even * 2 >= pairs and odd * 8 <= pairs:
        return "utf-16be", "no byte-order mark, every other byte NUL"
    return None


def _decode(name: str, raw: bytes) -> str:
    """UTF-8 text (a UTF-8 byte-order mark dropped); other encodings are refused with the iconv command
    that converts them, as a wrong guess would corrupt the text (latin-1 advice on UTF-16 does)."""
    if wide := _wide_encoding(raw):
        encoding, sign = wide
        raise DataError(
            f"{name}: {encoding.upper().removesuffix('LE').removesuffix('BE')} text ({sign}), not "
            f"UTF-8; re-encode it, e.g. `iconv -f {encoding} -t utf-8 {name} > utf8-{name}`"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{name}: not UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}); re-encode it, "
            f"e.g. `iconv -f latin1 -t utf-8 {name} > utf8-{name}`"
        ) from None


def _read_delimited(
    name: str, raw: bytes, sep: str, quoting: Literal[0, 3]
) -> tuple[pd.DataFrame, np.ndarray]:
    kind = "TSV" if sep == "\t" else "CSV"
    text = _decode(name, raw)
    try:
        # dtype=str and no NA parsing: a review reading "NA" or "null" stays text, labels stay as written
        frame = pd.read_csv(io.StringIO(text), sep=sep, quoting=quoting, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise DataError(
            f"{name}: cannot parse as {kind} ({detail}); check the quoting and the delimiter"
        ) from None
    return frame, _record_lines(text, sep, quoting, frame)


def _record_lines(text: str, sep: str, quoting: Literal[0, 3], frame: pd.DataFrame) -> np.ndarray:
    """The line of `text` each of `frame`'s rows starts on; the header's is line 1.

    pandas does not say, and the row's place + 2 is wrong after a blank line (pandas skips it) or a
    quoted text with line breaks. So, when there are such, a second read with the csv module, which
    counts lines, finds them; should it read other rows than pandas did, the place + 2 it is.
    """
    by_place = np.arange(2, len(frame) + 2)
    if len(text.splitlines()) == len(frame) + 1:  # a row a line: splitlines breaks at every line end
        return by_place
    firsts = frame.iloc[:, 0].tolist() if len(frame.columns) else []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting)
    starts: list[int] = []
    end = 0
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if len(record) > 1 or (record and record[0].strip()):  # pandas skips blank lines
                if starts and (len(starts) > len(firsts) or record[0] != firsts[len(starts) - 1]):
                    return by_place  # not the row pandas read there
                starts.append(start)
    except csv.Error:  # a field over the csv module's size limit, say
        return by_place
    return np.array(starts[1:]) if len(starts) == len(frame) + 1 else by_place


def _read_csv(name: str, raw: bytes) -> tuple[pd.DataFrame, np.ndarray]:
    return _read_delimited(name, raw, ",", 0)


def _read_tsv(name: str, raw: bytes) -> tuple[pd.DataFrame, np.ndarray]:
    return _read_delimited(name, raw, "\t", 3)  # quoting=3 (QUOTE_NONE), as GLUE's TSVs need


def _read_jsonl(name: str, raw: bytes) -> tuple[pd.DataFrame, np.ndarray]:
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    # newline="": lines end where an editor's do (\n, \r\n, \r), not at a U+2028 inside a JSON string
    for number, line in enumerate(io.StringIO(_decode(name, raw), newline=""), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{name} line {number}: not valid JSON ({exc.msg}); each line must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{name} line {number}: a JSON {type(record).__name__}, not an object; each line "
                'must look like {"text": ..., "label": ...}'
            )
        records.append(record)
        lines.append(number)
    return pd.DataFrame.from_records(records), np.array(lines, dtype=np.int64)


def _read_parquet(name: str, raw: bytes) -> tuple[pd.DataFrame, np.ndarray]:
    """Parquet has no lines: rows are numbered from 1, as a user counting them would."""
    try:
        frame = pd.read_parquet(io.BytesIO(raw))
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        detail = " ".join(str(exc).split())[:200]
        raise DataError(f"{name}: not a readable Parquet file ({detail}); re-export it") from None
    return frame, np.arange(1, len(frame) + 1)


# file name and bytes -> the file's frame, as read, and its rows' numbers (see `row_numbers`)
READERS: dict[str, Callable[[str, bytes], tuple[pd.DataFrame, np.ndarray]]] = {
    ".csv": _read_csv,
    ".tsv": _read_tsv,
    ".jsonl": _read_jsonl,
    ".parquet": _read_parquet,
}


def _write_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def _write_tsv(frame: pd.DataFrame) -> bytes:
    # unquoted, as _read_tsv reads it: a field read from a TSV holds no tab or newline to escape
    return frame.to_csv(sep="\t", quoting=csv.QUOTE_NONE, index=False, lineterminator="\n").encode("utf-8")


def _write_jsonl(frame: pd.DataFrame) -> bytes:
    return frame.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")


def _write_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


# frames (columns `text`, `label`) -> the bytes of a data/ file that READERS read back as the same frame
WRITERS: dict[str, Callable[[pd.DataFrame], bytes]] = {
    ".csv": _write_csv,
    ".tsv": _write_tsv,
    ".jsonl": _write_jsonl,
    ".parquet": _write_parquet,
}


def _select(name: str, frame: pd.DataFrame, data: DataParams, stored: bool = False) -> pd.DataFrame:
    """Keep the two configured columns as `text` and `label`, both str (nulls stay null).

    A file in data/ (`stored`) without the configured columns is read by `text` and `label` when it
    has those: bitune writes them so, whatever the source called them.
    """
    columns = (data.text_column, data.label_column)
    if stored and not all(c in frame.columns for c in columns):
        if all(c in frame.columns for c in STORED_COLUMNS):
            columns = STORED_COLUMNS
    found = [str(c) for c in frame.columns]
    missing = [
        (key, column)
        for key, column in zip(("data.text_column", "data.label_column"), columns, strict=True)
        if column not in frame.columns
    ]
    if missing:
        what = " and ".join(f"{column!r} ({key})" for key, column in missing)
        keys = " / ".join(key for key, _ in missing)
        raise DataError(
            f"{name}: no column {what}; columns found: {', '.join(found) or '(none)'}; "
            f"set {keys} to one of them"
        )
    return pd.DataFrame(
        {
            "text": [_as_str(v) for v in frame[columns[0]]],
            "label": [_as_str(v) for v in frame[columns[1]]],
        }
    )


def _as_str(value: Any) -> str | None:
    """str, with integral floats as ints (a label column with a null reads 1 as 1.0) and nulls kept."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _read_hf(spec: str, data: DataParams) -> RawData:
    """'<id>[:<config>]' from the Hugging Face hub; ClassLabel ids become their names."""
    ident, _, config = spec.partition(":")
    try:
        import datasets

        loaded = datasets.load_dataset(ident, config or None)
    except Exception as exc:  # network, auth, unknown id: all surface here, all need the same advice
        detail = " ".join(str(exc).split())[:200]
        raise DataError(
            f"data.source hf:{spec}: cannot load {ident!r} from the Hugging Face hub ({detail}); "
            "it needs network access and a valid dataset id — or download it and point "
            "data.source at the file"
        ) from None
    frames: dict[str, pd.DataFrame] = {}
    for hf_split, dataset in loaded.items():
        split = SPLIT_NAMES.get(hf_split.lower())
        if split is None or split in frames:
            continue
        label_feature = dataset.features.get(data.label_column)
        frame = dataset.to_pandas()
        frame = _select(f"hf:{spec} [{hf_split}]", frame, data)
        names = getattr(label_feature, "names", None)
        if names:
            if (frame["label"] == "-1").all():  # GLUE-style unlabelled test split: carve one instead
                continue
            frame["label"] = [names[int(v)] if v is not None and v != "-1" else None for v in frame["label"]]
        frames[split] = frame
    if "train" not in frames:
        raise DataError(
            f"data.source hf:{spec}: no train split (found: {', '.join(loaded)}); "
            "pick a dataset or config with a train split"
        )
    if len(frames) == 1:
        frames = {"all": frames["train"]}
    files = {
        f"{'train' if split == 'all' else split}.parquet": _write_parquet(frame)
        for split, frame in frames.items()
    }
    # no lines to name: rows are numbered from 1, as in the Parquet files data/ keeps of them
    return RawData(SourceFrames(frames, {s: np.arange(1, len(f) + 1) for s, f in frames.items()}), files)
