"""Reading data files into `(location, row)` pairs: one reader per file type, and datasets' folders.

Sources (nothing is ever downloaded):
  * a `.jsonl` file (blank lines allowed), a `.json` file (an array of objects, or
    JSON Lines), a `.csv` file (a header row), or a `.parquet` file;
  * a directory saved by `datasets` `save_to_disk` (it holds `state.json` /
    `dataset_info.json`); a saved `DatasetDict` (`dataset_dict.json`) gives the split `split=`;
  * a directory of such files, searched recursively. When file or folder names carry
    split names (`train.jsonl`, `data/test-00000.parquet`) only the files of `split=`
    are read; otherwise all of them are.
A single file is one split: `split=` does not apply to it. A location names the file and
the line (JSONL, JSON Lines, CSV: 1-based) or the row (JSON arrays, Parquet, datasets: 0-based,
as in `ds[N]`), so every error can say where the bad record is.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterator

# Names that mark a file or folder as one split of a dataset (`train-00000-of-00002.parquet`).
SPLIT_NAMES = ("train", "validation", "valid", "val", "dev", "test", "eval")


class DataError(ValueError):
    """A data file or row that cannot be read; the message names file, line/row and field."""


def _field_error(loc: str, field: str, problem: str) -> DataError:
    return DataError(f"{loc}: field {field!r}: {problem}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def read_records(path: str, split: str = "train") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield `(location, row)` for every record under `path`.

    `location` is `"file:LINE"` for JSONL and CSV (1-based, blank lines counted) and
    `"file:row N"` for JSON arrays, Parquet and saved datasets (0-based). Raises DataError for
    a missing path, an unsupported file, unreadable content, or a file with no records.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or directory")
    if not os.path.isdir(path):
        yield from _read_file(path)
    elif _is_saved_dataset(path):
        yield from _read_saved_dataset(path, split)
    else:
        for file in _split_files(path, split):
            yield from _read_file(file)


# ---------------------------------------------------------------- readers


def _read_file(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    reader = _READERS.get(os.path.splitext(path)[1].lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type (expected .jsonl, .json, .csv, .parquet, or a datasets directory)")
    n = 0
    for n, item in enumerate(reader(path), 1):
        yield item
    if n == 0:
        raise DataError(f"{path}: no records")


def _read_jsonl(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            loc = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8").lstrip("\ufeff" if lineno == 1 else "")
            except UnicodeDecodeError as e:
                raise DataError(f"{loc}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
            if line.strip():
                yield loc, _row(_decode(line, loc), loc)


def _decode(text: str, loc: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise DataError(f"{loc}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})"
                        if "\n" in text.strip() else f"{loc}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{loc}: invalid JSON (nested too deeply)") from None
    except _DuplicateKey as e:
        raise DataError(f"{loc}: invalid JSON (key {e.args[0]!r} given twice in one object)") from None


def _row(row: Any, loc: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{loc}: expected a JSON object, got {_kind(row)}")
    _check_text(row, loc, "")
    return row


def _read_json(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A `.json` file: an array of objects (rows 0-based), or JSON Lines under a .json name."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.lstrip().startswith("["):
        yield from _read_jsonl(path)
        return
    rows = _decode(text, path)
    for i, row in enumerate(rows):
        yield f"{path}:row {i}", _row(row, f"{path}:row {i}")


def _read_csv(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A `.csv` file with a header row; every value is a string (an empty cell is a missing value).
    A cell holding a JSON list (a `messages` column) is read as that list."""
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                loc = f"{path}:{reader.line_num}"
                if None in row or None in row.values():
                    raise DataError(f"{loc}: {'more' if None in row else 'fewer'} cells than the header's "
                                    f"{len(reader.fieldnames or ())} columns")
                yield loc, {k: _cell(v, loc) for k, v in row.items() if v != ""}
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None


def _cell(value: str, loc: str) -> Any:
    return _decode(value, loc) if value.startswith("[{") else value


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _check_text(value: Any, loc: str, field: str) -> None:
    """Every string in a row must be encodable text: a lone surrogate ("\\ud800") is valid JSON but no text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _field_error(loc, field or "(row)", "contains a lone surrogate (\\ud800-\\udfff), which is not text") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(v, loc, f"{field}.{k}" if field else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, loc, f"{field}[{i}]")


def _read_parquet(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    i = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError, ValueError) as e:  # a damaged page shows only when it is read
            raise DataError(f"{path}: not a readable Parquet file after row {i} ({e})") from None
        if batch is None:
            return
        for row in batch.to_pylist():
            yield f"{path}:row {i}", row
            i += 1


_READERS: dict[str, Callable[[str], Iterator[tuple[str, dict[str, Any]]]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def _is_saved_dataset(path: str) -> bool:
    markers = ("dataset_dict.json", "state.json", "dataset_info.json")
    return any(os.path.exists(os.path.join(path, m)) for m in markers)


def _read_saved_dataset(path: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a `save_to_disk` directory (a Dataset, or one split of a DatasetDict)."""
    dict_file = os.path.join(path, "dataset_dict.json")
    if os.path.exists(dict_file):
        try:
            with open(dict_file, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DataError(f"{dict_file}: not a readable dataset_dict.json ({e})") from None
        if not isinstance(info, dict):
            raise DataError(f"{dict_file}: expected a JSON object with a 'splits' list, got {_kind(info)}")
        splits = info.get("splits")
        if not isinstance(splits, list) or not all(isinstance(x, str) for x in splits):
            raise DataError(f"{dict_file}: field 'splits': expected a list of split names, got {_kind(splits)}")
        if split not in splits:
            raise DataError(f"{path}: no split {split!r} (splits: {', '.join(splits)})")
        path = os.path.join(path, split)
    from datasets import load_from_disk

    try:
        ds = load_from_disk(path)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable saved dataset ({e})") from None
    ds = ds.with_format(None)  # plain Python rows even if a tensor format was saved
    if len(ds) == 0:
        raise DataError(f"{path}: no records")
    for i, row in enumerate(ds):
        yield f"{path}:row {i}", row


def _split_of(relpath: str) -> str | None:
    """The split a data file belongs to by its name or folder, e.g. `data/train-0001.parquet` -> train."""
    parts = relpath.split(os.sep)
    parts[-1] = os.path.splitext(parts[-1])[0]
    for part in reversed(parts):
        head = re.split(r"[-_.]", part.lower(), maxsplit=1)[0]
        if head in SPLIT_NAMES:
            return head
    return None


def _split_files(path: str, split: str) -> list[str]:
    """The data files of directory `path` that make up `split` (all of them when none is split-named)."""
    files = sorted(
        os.path.relpath(os.path.join(root, name), path)
        for root, dirs, names in os.walk(path)
        for name in names
        if os.path.splitext(name)[1].lower() in _READERS and not name.startswith(".")
    )
    if not files:
        raise DataError(f"{path}: no .jsonl, .json, .csv or .parquet files, and not a saved datasets directory")
    splits = {f: _split_of(f) for f in files}
    if all(s is None for s in splits.values()):
        return [os.path.join(path, f) for f in files]
    unnamed = [f for f, s in splits.items() if s is None]
    if unnamed:  # reading it into every split, or none, would both be silent mistakes
        raise DataError(f"{path}: cannot tell which split {unnamed[0]!r} belongs to "
                        f"(other files are named by split: {', '.join(sorted(set(filter(None, splits.values()))))})")
    chosen = [os.path.join(path, f) for f, s in splits.items() if s == split]
    if not chosen:
        raise DataError(f"{path}: no files for split {split!r} (found: {', '.join(sorted(set(splits.values())))})")
    return chosen
