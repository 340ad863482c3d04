"""Loading benchmark data: a local file or folder, or a Hugging Face data set by its hub id.

One function for every benchmark, so that each gets the same behaviour: local paths win; hub ids go
through `datasets`; when the hub cannot be reached the error comes within seconds, without a
traceback, and says how to give a local copy; every row is checked for the fields the benchmark
needs, and a missing field is reported with the data set's name.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlparse

from unlearn.config import ConfigError

Row = dict[str, Any]


class DataUnavailable(ConfigError):
    """The data cannot be read (offline hub, missing file); raised before any model is built."""

    kind = "data unavailable"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or ``HF_ENDPOINT``) answers a TCP connection quickly."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def offline_mode(active: bool = True) -> Iterator[None]:
    """Hugging Face libraries in offline mode for the block (they read ``HF_HUB_OFFLINE`` once, at
    import, and otherwise retry an unreachable hub for about half a minute before giving up)."""
    if not active:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _read_json_rows(path: Path, split: str) -> list[Any]:
    """A JSON document (a list, or a dict of splits) or JSON lines: hub dumps often name JSON lines
    ``.json`` (TOFU's files do)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        at = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataUnavailable(
            f"{path}:{at}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:  # each line is parsed alone: its own "line 1" is not the file's
                raise DataUnavailable(
                    f"{path}:{n}: neither JSON nor JSON lines (line {n}: {e.msg} at column {e.colno}: {line[:80]!r})"
                ) from None
        return rows
    if isinstance(data, dict):
        return list(data[split] if split in data else data.get("data", [data]))
    return list(data) if isinstance(data, list) else [data]


def _read_local(path: Path, split: str) -> list[Row]:
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            if split not in ds:
                raise DataUnavailable(f"{path}: no split {split!r} (it has {sorted(ds)})")
            ds = ds[split]
        return [dict(r) for r in ds]
    suffix = path.suffix.lower()
    if suffix == ".txt":  # a plain-text corpus (a book): one row
        return [{"text": path.read_text()}]
    if suffix in (".jsonl", ".json"):
        # MUSE's own data files are JSON lists of strings: each string is a text row
        return [r if isinstance(r, dict) else {"text": r} for r in _read_json_rows(path, split)]
    if suffix in (".csv", ".parquet"):
        from datasets import load_dataset

        return [dict(r) for r in load_dataset(suffix[1:], data_files=str(path), split="train")]
    raise DataUnavailable(
        f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .csv, .parquet, .txt or a datasets folder)"
    )


def _sample(n: int, max_rows: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a seeded random sample of ``max_rows`` out of ``n`` (None: keep all)."""
    if max_rows is None or n <= max_rows:
        return None
    import numpy as np

    return sorted(np.random.default_rng(seed).choice(n, max_rows, replace=False).tolist())


def _read_hub(
    hub_id: str, config: str | None, split: str, dataset: str, path_key: str, max_rows: int | None = None, seed: int = 0
) -> list[Row]:
    from datasets import load_dataset

    where = f"{hub_id}" + (f" ({config}, split {split})" if config else f" (split {split})")
    hint = f"give a local copy with {path_key}=/path/to/file.jsonl (or a `datasets` folder), or run online"
    online = hub_reachable()
    try:
        with offline_mode(not online):  # a copy in the local HF cache still works, and no retries
            ds = load_dataset(hub_id, config, split=split)
    except Exception as e:  # datasets raises many types for "not there"; all mean the same here
        why = (
            "the Hugging Face hub is not reachable and no cached copy exists"
            if not online
            else f"{type(e).__name__}: {e}"
        )
        raise DataUnavailable(f"{dataset}: cannot load {where}: {why}; {hint}") from None
    keep = _sample(len(ds), max_rows, seed)  # select before materialising: large corpora stay on disk
    return [dict(r) for r in (ds.select(keep) if keep is not None else ds)]


def check_fields(rows: Sequence[Row], required: Sequence[str], dataset: str, source: str) -> None:
    """Every row must have every required field, and a text field (a string in the first row) a
    string in every row: a number or null among the answers stopped the run with a traceback at
    encoding, after any fine-tuning. The error names the data set, the row and the field."""
    if not rows:
        raise DataUnavailable(f"{dataset}: {source} has no rows")
    for field in required:
        for i, r in enumerate(rows):
            if field not in r:
                raise DataUnavailable(
                    f"{dataset}: {source} row {i} has no field {field!r} (fields: {sorted(r)}); "
                    f"expected {list(required)}"
                )
        if not isinstance(rows[0][field], str):
            continue  # lists and numbers (choices, answer indices) are checked by their data set
        for i, r in enumerate(rows):
            v = r[field]
            if not isinstance(v, str):
                raise DataUnavailable(
                    f"{dataset}: {source} row {i} field {field!r} is {type(v).__name__} {_short(v)}, where row 0's "
                    "is a string"
                )


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def load_rows(
    dataset: str,
    hub_id: str | None,
    *,
    config: str | None = None,
    split: str = "train",
    path: str | None = None,
    required: Sequence[str] = (),
    path_key: str = "path",
    max_rows: int | None = None,
    seed: int = 0,
) -> list[Row]:
    """Rows of one split: from ``path`` when given, else from the hub. ``dataset`` names the
    benchmark part in messages; ``path_key`` is the config key a user sets for a local copy.
    ``max_rows`` keeps a seeded random sample (in the original order) of at most that many rows."""
    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataUnavailable(f"{dataset}: {path_key}={path} does not exist")
        rows, source = _read_local(p, split), str(p)
        keep = _sample(len(rows), max_rows, seed)
        rows = rows if keep is None else [rows[i] for i in keep]
    elif hub_id:
        rows, source = _read_hub(hub_id, config, split, dataset, path_key, max_rows, seed), hub_id
    else:
        raise DataUnavailable(f"{dataset}: neither a hub id nor {path_key} is set")
    check_fields(rows, required, dataset, source)
    return rows
