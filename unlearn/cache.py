"""Content-addressed cache for fine-tuned models and evaluations.

A cache entry's key is the SHA-256 of a canonical JSON of everything that determines it (model
spec, tokenizer, training rows, recipe, code version of the recipe), so a changed recipe never
reuses a stale entry. Entries are built in a temporary folder (or file) and renamed into place
under a file lock, so parallel sweep jobs build each entry once and never see a half-written one.

An entry records what it held when written (each file's size and SHA-256, :func:`fingerprint`)
and is checked against that record whenever it is read: a file damaged later (overwritten,
truncated) is reported and the entry rebuilt, instead of being loaded as if it were the model
the key names. Reading a complete, intact entry takes no lock, so a read-only cache works.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout

from unlearn.rundir import read_json, write_json
from unlearn.utils.progress import say

#: bump when the fine-tuning recipe's code changes meaning, to invalidate old entries
RECIPE_VERSION = 1
#: a folder entry's record of its files, written last (its presence marks the entry complete)
MANIFEST = "manifest.json"
#: seconds between "still waiting for the lock" notices
LOCK_NOTICE_S = 60.0
#: files up to this size are hashed whole; larger ones by a sample (see fingerprint)
WHOLE_HASH_BYTES = 256 << 20
_BLOCK = 1 << 20


def digest(obj: Any) -> str:
    """Stable short hash of a JSON-able object."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def fingerprint(path: Path) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a file: the hash of all of it up to :data:`WHOLE_HASH_BYTES`;
    beyond that (multi-GB weights, checked on every run) of 65 blocks of 1 MiB spread evenly from
    its start to its end, which still catches truncation (the size) and any overwritten region
    larger than the gaps between blocks, at 65 MiB of reading."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        if size <= WHOLE_HASH_BYTES:
            for block in iter(lambda: f.read(_BLOCK), b""):
                h.update(block)
        else:
            n = 64
            for i in range(n + 1):
                f.seek(min(size - _BLOCK, i * (size - _BLOCK) // n))
                h.update(f.read(_BLOCK))
    return {"size": size, "sha256": h.hexdigest()}


def _manifest(folder: Path) -> dict[str, Any]:
    return {
        str(p.relative_to(folder)): fingerprint(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def damage(folder: Path) -> str | None:
    """Why the entry ``folder`` cannot be trusted (None when every file matches its manifest)."""
    try:
        recorded = read_json(folder / MANIFEST)
    except (OSError, ValueError):
        return f"no readable {MANIFEST} (incomplete, or written before entries were checked)"
    for name, want in recorded.items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        got = fingerprint(p)
        if got["size"] != want["size"]:
            return f"{name} has {got['size']} bytes, {want['size']} were written"
        if got["sha256"] != want["sha256"]:
            return f"{name} does not match the checksum recorded when it was written"
    return None


def _value_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class Cache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def _locked(self, path: Path, what: str) -> FileLock:
        """The entry's lock, acquired; while another process holds it, says so every
        :data:`LOCK_NOTICE_S` seconds (a cold run behind a long fine-tune is not hung)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        waited = 0.0
        while True:
            try:
                lock.acquire(timeout=LOCK_NOTICE_S)
                return lock
            except Timeout:
                waited += LOCK_NOTICE_S
                say(f"waiting for {lock.lock_file} ({waited:.0f}s): another process is building {what}")

    def directory(
        self, kind: str, key: Any, build: Callable[[Path], None], label: str | None = None
    ) -> tuple[Path, bool]:
        """Folder ``<root>/<kind>/<hash>``, built by ``build(tmp_dir)`` if absent or damaged.
        Returns (path, hit). ``label`` names the entry in messages (``the target model``)."""
        path = self.root / kind / digest(key)
        what = f"{label or kind} ({path})"
        if path.is_dir() and (path / MANIFEST).exists() and damage(path) is None:
            return path, True  # complete and intact: no lock needed
        lock = self._locked(path, what)
        try:
            if path.is_dir():
                why = damage(path)
                if why is None:
                    return path, True  # built while we waited
                say(f"cache entry {what} is damaged: {why}; rebuilding it")
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
            try:
                build(tmp)
                write_json(tmp / "key.json", key)
                write_json(tmp / MANIFEST, _manifest(tmp))
                if path.exists():
                    shutil.rmtree(path)
                tmp.rename(path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            lock.release()
        return path, False

    def json(self, kind: str, key: Any, compute: Callable[[], Any], label: str | None = None) -> tuple[Any, bool]:
        """``<root>/<kind>/<hash>.json``, computed by ``compute()`` if absent or damaged. Returns (value, hit)."""
        path = self.root / kind / f"{digest(key)}.json"
        what = f"{label or kind} ({path})"
        if (value := self._read_json(path)) is not None:
            return value[0], True
        lock = self._locked(path, what)
        try:
            if path.exists():
                if (value := self._read_json(path)) is not None:
                    return value[0], True
                say(
                    f"cache entry {what} is damaged (unreadable, or its value does not match its checksum); "
                    "recomputing it"
                )
            value = compute()
            # the checksum is of the value as it reads back (tuples become lists, numbers floats)
            tmp = path.with_name(f".{path.name}.tmp")
            write_json(tmp, value)
            value = read_json(tmp)
            tmp.unlink()
            write_json(path, {"key": key, "value": value, "sha256": _value_digest(value)})
        finally:
            lock.release()
        return value, False

    @staticmethod
    def _read_json(path: Path) -> tuple[Any] | None:
        """``(value,)`` of an intact entry, else None."""
        if not path.exists():
            return None
        try:
            entry = read_json(path)
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or "value" not in entry or entry.get("sha256") != _value_digest(entry["value"]):
            return None
        return (entry["value"],)
