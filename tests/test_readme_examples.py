"""The README's "Extending" examples work as written: every `# file:` block is written to a fresh
folder and every documented command is run from it, with the code and configs the user would add."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SECTION = "## Extending"
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _blocks() -> tuple[dict[str, str], list[str]]:
    """The section's files (path -> content) and its shell commands, in order."""
    files, commands = {}, []
    for lang, body in FENCE.findall(_section()):
        first, _, rest = body.partition("\n")
        if first.startswith("# file: "):
            files[first.removeprefix("# file: ").strip()] = rest
        elif lang == "bash":
            commands += [line for line in body.splitlines() if line.strip() and not line.startswith("#")]
    return files, commands


def test_the_section_documents_a_loss_a_combiner_and_a_benchmark():
    files, commands = _blocks()
    assert {"myext/conf/forget/capped_ga.yaml", "myext/conf/combiner/norm_cap.yaml", "myext/conf/benchmark/my_qa.yaml"} <= set(files)
    assert len(commands) == 2


def _run(command: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    """A README command line (`PYTHONPATH=... python -m unlearn ...`) run with this interpreter."""
    words = shlex.split(command)
    env = {**os.environ, "UNLEARN_CACHE": str(cache), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env[key] = os.pathsep.join([value, str(REPO)]) if key == "PYTHONPATH" else value
    assert words[:3] == ["python", "-m", "unlearn"], command
    return subprocess.run([sys.executable, *words[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _results(cwd: Path) -> tuple[Path, dict]:
    (path,) = list((cwd / "outputs").rglob("results.json"))
    return path.parent, json.loads(path.read_text())


@pytest.mark.slow
def test_the_documented_extensions_run(tmp_path, cache_dir):
    files, commands = _blocks()
    for rel, content in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)

    # the user's loss and combiner, on the shrunken toy run
    work = tmp_path / "a"
    work.mkdir()
    (work / "myext").symlink_to(tmp_path / "myext")
    p = _run(commands[0], work, cache_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    run, res = _results(work)
    assert res["status"] == "ok", res.get("reason")
    config = json.loads((run / "config.json").read_text())
    assert config["forget"]["_target_"] == "my_losses.CappedGA" and config["combiner"]["_target_"] == "my_combiners.NormCap"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    capped = [s["train/grad/capped_frac"] for s in steps if "train/grad/capped_frac" in s]
    assert capped and all(0.0 <= c <= 1.0 for c in capped)  # the combiner's own statistic was logged
    forget_losses = [s["train/loss/forget"] for s in steps if "train/loss/forget" in s]
    assert min(forget_losses) >= -6.0 - 1e-4  # the loss is capped at -cap per sample

    # the user's benchmark: target fine-tuned on its files, unlearned, evaluated by its evaluator
    work = tmp_path / "b"
    work.mkdir()
    (work / "myext").symlink_to(tmp_path / "myext")
    p = _run(commands[1], work, cache_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    _, res = _results(work)
    assert res["status"] == "ok", res.get("reason")
    assert res["eval/my_qa/forget_prob"] < res["target/my_qa/forget_prob"]
    assert res["target/my_qa/forget_prob"] > 0.3  # the target learnt the forget answers first
