"""The cache checks what it reads against what it wrote: a damaged entry is reported and rebuilt,
never loaded as the model its key names; a complete entry is read without a lock; a job waiting on
another's lock says what it waits for."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

import unlearn.cache as cache_mod
from unlearn.cache import Cache, digest

KEY = {"model": "stub", "rows": 3}


class Builder:
    """Writes a 4 KiB weights file and a config, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, tmp: Path) -> None:
        self.calls += 1
        (tmp / "model.safetensors").write_bytes(bytes(range(256)) * 16)
        (tmp / "config.json").write_text("{}")


def _entry(tmp_path: Path) -> tuple[Cache, Builder, Path]:
    cache, build = Cache(tmp_path / "cache"), Builder()
    path, hit = cache.directory("models", KEY, build)
    assert not hit and build.calls == 1
    assert cache.directory("models", KEY, build) == (path, True) and build.calls == 1
    return cache, build, path


def _overwrite_second_half(f: Path) -> None:
    with f.open("r+b") as fh:
        fh.seek(f.stat().st_size // 2)
        fh.write(b"\0" * (f.stat().st_size - f.stat().st_size // 2))


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:100])


@pytest.mark.parametrize("damage", [_overwrite_second_half, _truncate], ids=["overwritten", "truncated"])
def test_a_damaged_model_entry_is_reported_and_rebuilt(tmp_path, capsys, damage):
    cache, build, path = _entry(tmp_path)
    weights = path / "model.safetensors"
    good = weights.read_bytes()
    damage(weights)
    assert weights.read_bytes() != good

    again, hit = cache.directory("models", KEY, build, label="the target model")
    assert again == path and not hit and build.calls == 2, "a damaged entry must be rebuilt, not served"
    assert weights.read_bytes() == good
    err = " ".join(capsys.readouterr().err.split())
    assert "damaged" in err and "model.safetensors" in err and "the target model" in err
    assert cache.directory("models", KEY, build) == (path, True) and build.calls == 2


def test_an_entry_appears_only_once_complete(tmp_path):
    cache = Cache(tmp_path / "cache")

    def dies(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.directory("models", KEY, dies)
    assert not (tmp_path / "cache" / "models" / digest(KEY)).exists()
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_a_damaged_evaluation_entry_is_recomputed(tmp_path, capsys):
    cache, calls = Cache(tmp_path / "cache"), []

    def compute():
        calls.append(1)
        return {"metrics": {"model_utility": 0.386}}

    assert cache.json("evals", KEY, compute) == ({"metrics": {"model_utility": 0.386}}, False)
    assert cache.json("evals", KEY, compute) == ({"metrics": {"model_utility": 0.386}}, True)
    f = tmp_path / "cache" / "evals" / f"{digest(KEY)}.json"
    f.write_text(f.read_text().replace("0.386", "0.017"))  # edited, or another model's numbers
    assert cache.json("evals", KEY, compute) == ({"metrics": {"model_utility": 0.386}}, False)
    assert len(calls) == 2 and "damaged" in capsys.readouterr().err
    f.write_text(f.read_text()[:20])  # torn
    assert cache.json("evals", KEY, compute)[1] is False and len(calls) == 3


def test_a_complete_entry_is_read_without_a_lock(tmp_path, monkeypatch):
    cache, build, path = _entry(tmp_path)
    cache.json("evals", KEY, lambda: {"a": 1.0})

    def no_lock(*a, **k):
        raise PermissionError("read-only cache: the lock file cannot be created")

    monkeypatch.setattr(cache_mod, "FileLock", no_lock)
    assert cache.directory("models", KEY, build) == (path, True)
    assert cache.json("evals", KEY, lambda: {"a": 2.0}) == ({"a": 1.0}, True)


def test_waiting_for_another_process_lock_says_what_it_waits_for(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cache_mod, "LOCK_NOTICE_S", 0.2)
    cache, build = Cache(tmp_path / "cache"), Builder()
    path = tmp_path / "cache" / "models" / digest(KEY)
    path.parent.mkdir(parents=True)
    held = FileLock(str(path) + ".lock", thread_local=False)
    held.acquire()
    threading.Timer(1.0, held.release).start()  # the other process finishes after a while
    t = time.monotonic()
    assert cache.directory("models", KEY, build, label="the oracle model") == (path, False)
    assert time.monotonic() - t >= 0.9
    err = capsys.readouterr().err
    assert err.count("waiting for") >= 2, err  # periodically
    assert "the oracle model" in " ".join(err.split()) and str(path) + ".lock" in "".join(err.split())
