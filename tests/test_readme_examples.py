"""The documented "Extending" examples (docs/extending.md, linked from the README) work as written:
every `# file:` block is written to a fresh folder and every documented command is run from it, with
the code and configs the user would add. And every relative link in the README and docs/ resolves to
a file and, where it names one, a heading or anchor."""

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

# the examples moved from the README's "Extending" section to their own page (issue 12 §5)
PAGE = REPO / "docs" / "extending.md"
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ANCHOR = re.compile(r'<a (?:id|name)="([^"]+)"')


def _section() -> str:
    return PAGE.read_text()


def _anchors(text: str) -> set[str]:
    """GitHub's heading slugs (lower case, punctuation dropped, spaces to '-', repeats numbered)
    outside code fences, plus explicit `<a id=...>` anchors."""
    seen: dict[str, int] = {}
    out = set(ANCHOR.findall(text))
    for line in FENCE.sub("", text).splitlines():
        if not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_the_readme_links_the_extending_page():
    assert "](docs/extending.md)" in (REPO / "README.md").read_text()


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no file)")
            elif anchor and (file.suffix != ".md" or anchor not in _anchors(file.read_text())):
                broken.append(f"{page.name}: {target} (no anchor)")
    assert not broken, broken


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
    assert {
        "myext/conf/forget/capped_ga.yaml",
        "myext/conf/combiner/norm_cap.yaml",
        "myext/conf/benchmark/my_qa.yaml",
    } <= set(files)
    assert len(commands) == 2


def _run(command: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    """A documented command line (`PYTHONPATH=... python -m unlearn ...`) run with this interpreter."""
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
    assert (
        config["forget"]["_target_"] == "my_losses.CappedGA"
        and config["combiner"]["_target_"] == "my_combiners.NormCap"
    )
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
