"""The one validation pass: every problem in a composed config, reported together, before any model.

torchtune's ``_validate`` is the model: the pass does not stop at the first bad value but collects
them all into :class:`Problems` and raises one :class:`~unlearn.config.ConfigError` listing each
(the key, the value and what is allowed). It covers

- the plain sections (top level, ``train``, ``optim``, ``trainer``, ``paths`` ...): a table of
  keys with their rules (:data:`RULES`); a key no section reads is an error (Hydra's ``+key=``);
- every ``_target_`` node: its keys must be arguments of the target and fit their annotations;
- numbers anywhere: finite (``nan`` never, ``inf`` only where a key gives it a meaning), seeds in
  numpy's range;
- paths: a given checkpoint folder must hold a readable Hugging Face model; files must exist;
- options that have no effect together, and presets used with a benchmark they do not fit.

Types and the keys of the typed sections (``train``, ``optim``, ``trainer``, ``benchmark.finetune``)
are their schemas' job, at composition (:mod:`unlearn.schema`); their ranges come from there too.
The components' own constructors still check their arguments; :func:`unlearn.job.build_job`
runs them inside the same :class:`Problems`, so their errors join the list.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import struct
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Mapping

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from unlearn.config import TASKS, ConfigError
from unlearn.rules import (
    ANY,
    BOOL,
    SEED,
    STR,
    Rule,
    choice,
    field_rules,
    integer,
    is_int,
    is_number,
    kind,
    num,
)
from unlearn.schema import SECTIONS as SCHEMA_SECTIONS

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


class Problems:
    """Collects configuration errors; :meth:`raise_if_any` raises them as one :class:`ConfigError`."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        key = _lead_key(message)
        if message in self.items or (key and any(_overlaps(key, _lead_key(m)) for m in self.items)):
            return  # a constructor re-reporting a key (or a key under it) that the table already named
        self.items.append(message)

    @contextlib.contextmanager
    def collect(self, key: str | None = None) -> Iterator[None]:
        """Record a ``ConfigError``/``ValueError``/``TypeError`` raised inside instead of stopping."""
        try:
            yield
        except ConfigError as e:
            self.add(str(e))
        except (ValueError, TypeError, OmegaConfBaseException) as e:
            msg = str(e)
            self.add(msg if key is None or msg.startswith(key) else f"{key}: {msg}")

    def raise_if_any(self) -> None:
        if len(self.items) == 1:
            raise ConfigError(self.items[0])
        if self.items:
            raise ConfigError(f"{len(self.items)} errors in the config:\n  - " + "\n  - ".join(self.items))


def _overlaps(a: str, b: str) -> bool:
    return bool(b) and (a == b or b.startswith(a + ".") or a.startswith(b + "."))


def _lead_key(message: str) -> str:
    """The dotted key a message starts with (``optim.lr must be ...`` → ``optim.lr``); after a
    section's prefix, the key under it (``combiner: combiner.alpha must ...`` → ``combiner.alpha``,
    so that it is not taken for a repeat of another ``combiner.*`` problem)."""
    head = message.split(" ", 1)[0].split(":", 1)[0].split("=", 1)[0]
    if not (head and all(p.isidentifier() or p.isdigit() for p in head.split("."))):
        return ""
    prefix = head + ": "
    if message.startswith(prefix):
        inner = _lead_key(message[len(prefix) :])
        if inner.startswith(head + "."):
            return inner
    return head


# -- rules ----------------------------------------------------------------------------------------
def _typed_rules() -> dict[str, Rule]:
    """The typed sections' rules, from their dataclasses (each stated there, once)."""
    return {
        f"{where}.{name}": rule for _, schema, where in SCHEMA_SECTIONS for name, rule in field_rules(schema).items()
    }


#: the keys of the sections without a ``_target_``, and what each allows; a key absent here is unknown.
#: The typed sections (train, optim, trainer, benchmark.finetune) bring their own (unlearn.schema).
RULES: dict[str, Rule] = {
    "task": choice(*TASKS),
    "seed": SEED,
    "group": kind(str, what="a string (the W&B group)", null=True),
    "sweep": kind(str, int, what="a folder name under multirun/"),
    "save_model": BOOL,
    "resume": BOOL,
    "objective_metric": kind(str, list, ListConfig, what="a results.json key or a list of them", null=True),
    "paths.cache_dir": STR,
    "model.name": STR,
    "model.device": STR,
    "model.dtype": STR,
    "model.gradient_checkpointing": BOOL,
    "model.lora": ANY,  # checked by unlearn.models.lora.lora_config
    "method.name": STR,
    "method.tuned": ANY,
    "logger.wandb": ANY,
    "preset.name": STR,
    "preset.benchmark": STR,
    "benchmark.name": STR,
    "benchmark.split": ANY,
    "benchmark.roles.forget": kind(list, ListConfig, str, what="a split name or a list of them"),
    "benchmark.roles.retain": kind(list, ListConfig, str, what="a split name or a list of them"),
    "benchmark.roles.normal_pool": kind(list, ListConfig, str, what="a split name or a list of them"),
    "benchmark.target.path": kind(str, what="a Hugging Face model folder", null=True),
    "benchmark.target.finetune_on": kind(list, ListConfig, what="a list of split names", null=True),
    "benchmark.oracle.path": kind(str, what="a Hugging Face model folder", null=True),
    "benchmark.oracle.eval_file": kind(str, what="an eval_oracle.json file", null=True),
    "benchmark.oracle.finetune_on": kind(list, ListConfig, what="a list of split names", null=True),
    "benchmark.report": ANY,  # read by unlearn.report
    "plan.gpus": integer(1, null=True, what="GPUs to plan for; null: trainer.devices"),
    "plan.sharded": kind(bool, null=True, what="true or false (null: as the trainer, true under trainer=fsdp)"),
    "plan.gpu_memory_gb": num(0, lo_open=True, null=True, what="GiB per GPU; null: the GPU's own"),
    "plan.headroom": num(0, 1, hi_open=True, what="the fraction of GPU memory left free"),
    "plan.config": kind(str, what="a config.json or model folder", null=True),
    "plan.check": BOOL,
    **_typed_rules(),
}
#: checked where it is used (unlearn.job.build_job): a job that fine-tunes nothing may leave it unfit
CHECKED_WHEN_USED = "benchmark.finetune."
#: sections whose keys are checked against RULES (a ``_target_`` node is checked against its signature)
SECTIONS = {
    "",
    "plan",
    "paths",
    "train",
    "optim",
    "trainer",
    "model",
    "method",
    "logger",
    "preset",
    "benchmark",
    "benchmark.roles",
    "benchmark.target",
    "benchmark.oracle",
    "benchmark.finetune",
}
#: top-level keys that are whole groups, each a ``_target_`` node (or null for none)
GROUP_NODES = ("forget", "retain", "smoothing", "combiner")
SUBTREES = {"model.prompt": "unlearn.data.format.PromptFormat"}


def _allowed_in(section: str) -> set[str]:
    pre = f"{section}." if section else ""
    keys = {k[len(pre) :].split(".", 1)[0] for k in RULES if k.startswith(pre)}
    keys |= {k[len(pre) :] for k in SUBTREES if k.startswith(pre) and "." not in k[len(pre) :]}
    if section == "":
        keys |= set(GROUP_NODES) | {"hydra"}
    if section == "model":
        keys.add("spec")
    if section == "benchmark":
        keys |= {"data", "eval", "collapse", "roles", "target", "oracle", "finetune"}
    return keys


# -- walking the tree -----------------------------------------------------------------------------
def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _value(cfg: DictConfig, key: str, problems: Problems) -> tuple[bool, Any]:
    """The resolved value at ``key``; (False, None) when it is missing or does not resolve (reported)."""
    try:
        return True, OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        problems.add(
            f"{key}: a value is required here (it is '???' in the config); set it on the command line, e.g. {key}=..."
        )
    except OmegaConfBaseException as e:
        problems.add(f"{key}: {getattr(e, 'msg', e)}")
    return False, None


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(key, node) pairs of every leaf; ``_target_`` nodes and lists are walked too."""
    if isinstance(node, DictConfig):
        for k in node.keys():
            yield from _leaves(node._get_node(k), _join(prefix, k))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _leaves(node._get_node(i), _join(prefix, i))
    else:
        yield prefix, node


def check_values(cfg: DictConfig, problems: Problems) -> None:
    """Completeness, the :data:`RULES` table, finiteness everywhere and seeds wherever they appear."""
    for key, _ in _leaves(cfg, ""):
        if key.startswith(("hydra.", "benchmark.report.", CHECKED_WHEN_USED)):
            continue
        ok, v = _value(cfg, key, problems)
        if not ok:
            continue
        rule = RULES.get(key)
        if rule is not None:
            if (why := rule.problem(key, v)) is not None:
                problems.add(why)
            continue
        last = key.rsplit(".", 1)[-1]
        if last == "seed" and v is not None and (why := SEED.problem(key, v)) is not None:
            problems.add(why)
        elif isinstance(v, float) and not math.isfinite(v):
            problems.add(f"{key} must be a finite number, got {v!r}")


def check_known_keys(cfg: DictConfig, problems: Problems) -> None:
    """A key that no config defines and nothing reads is an error, not silently kept (``+x.y=1``)."""
    for section in sorted(SECTIONS):
        node = OmegaConf.select(cfg, section) if section else cfg
        if not isinstance(node, DictConfig):
            continue
        allowed = _allowed_in(section)
        for k in node.keys():
            if k not in allowed:
                where = f"under {section}" if section else "at the top level"
                problems.add(
                    f"{_join(section, k)}: no component reads this key (allowed {where}: "
                    f"{', '.join(sorted(allowed - {'hydra'}))})"
                )


# -- _target_ nodes -------------------------------------------------------------------------------
def _target_nodes(node: Any, prefix: str) -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield prefix, node
        for k in node.keys():
            if k != "hydra" or prefix:
                yield from _target_nodes(node._get_node(k), _join(prefix, k))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _target_nodes(node._get_node(i), _join(prefix, i))


def _locate(path: str) -> Any:
    from hydra._internal.utils import _locate as locate

    return locate(path)


def _fits(v: Any, tp: Any) -> bool | None:
    """Whether ``v`` fits annotation ``tp``; None where the annotation is not a simple one."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return None
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        verdicts = [_fits(v, a) for a in typing.get_args(tp)]
        return True if any(verdicts) else (None if None in verdicts else False)
    if origin is typing.Literal:
        return v in typing.get_args(tp)
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return is_int(v)
    if tp is float:
        return is_number(v)
    if tp is str:
        return isinstance(v, str)
    container = origin or tp
    if (
        container in (list, tuple)
        or container in (typing.Sequence,)
        or getattr(container, "__name__", "") == "Sequence"
    ):
        return isinstance(v, (list, tuple, ListConfig))
    return None


def _hints(obj: Any) -> dict[str, Any]:
    for cand in (obj.__init__, obj) if inspect.isclass(obj) else (obj,):
        try:
            hints = typing.get_type_hints(cand)
        except Exception:  # an annotation that does not resolve: no type checks for it
            continue
        if hints:
            return hints
    return {}


def _describe(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("NoneType", "None").replace("<class '", "").replace("'>", "")


def check_targets(cfg: DictConfig, problems: Problems) -> None:
    """Each ``_target_`` node's keys are arguments of its target, with values of the annotated type."""
    for key, node in _target_nodes(cfg, ""):
        if key.startswith("hydra"):
            continue
        target = node.get("_target_")
        try:
            obj = _locate(str(target))
            sig = inspect.signature(obj)
        except Exception as e:  # an import error names the module
            problems.add(f"{key}._target_: cannot import {target!r} ({type(e).__name__}: {e})")
            continue
        params = sig.parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        hints = _hints(obj)
        for k in map(str, node.keys()):  # a config's keys are strings (DictConfig's type allows ints, enums...)
            if k in HYDRA_KEYS:
                continue
            if k not in params:
                takes = (
                    ", ".join(n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
                    or "nothing"
                )
                problems.add(f"{key}.{k}: {str(target).rsplit('.', 1)[-1]} takes no argument {k!r} (it takes: {takes})")
                continue
            tp = hints.get(k)
            if tp is None:
                continue
            ok, v = _value(cfg, f"{key}.{k}", Problems())
            if ok and isinstance(v, (DictConfig, ListConfig)) is False and _fits(v, tp) is False:
                problems.add(f"{key}.{k} must be {_describe(tp)}, got {v!r}")
    for sub, target in SUBTREES.items():
        node = OmegaConf.select(cfg, sub)
        if isinstance(node, DictConfig):
            params = inspect.signature(_locate(target)).parameters
            for k in map(str, node.keys()):
                if k not in params:
                    problems.add(f"{sub}.{k}: no component reads this key (allowed: {', '.join(params)})")


# -- paths ----------------------------------------------------------------------------------------
def check_writable_dir(path: str | Path, key: str) -> str | None:
    """Why ``path`` cannot be (made) a writable folder, or None when it can."""
    p = Path(str(path)).expanduser()
    if len(str(p)) > 4000 or any(len(part.encode()) > 255 for part in p.parts):
        return f"{key}: {str(p)[:120]}... is not a possible folder name (a path part longer than 255 bytes)"
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{key}: {p} cannot be a folder: {probe} is a file"
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        return f"{key}: {p} cannot be created or written: {probe} is not writable"
    return None


class RunDirCheck(Callback):
    """A Hydra callback (the base class gives the hooks it does not use, as no-ops): the run (or sweep)
    folder must be possible before Hydra creates it, which it does before the job starts; an
    impossible one is a config error, exit status 2."""

    def _check(self, config: DictConfig, key: str) -> None:
        import sys

        try:
            path = str(OmegaConf.select(config, key))
        except OmegaConfBaseException:
            return  # Hydra reports an unresolvable folder itself
        if (why := check_writable_dir(path, key)) is not None:
            print(f"{ConfigError.kind}: {why}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")


def _safetensors_ok(f: Path) -> str | None:
    try:
        with f.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return "is too short for a safetensors file"
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000 or n > f.stat().st_size:
                return "has no valid safetensors header"
            json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        return f"has no valid safetensors header ({type(e).__name__})"
    return None


def model_folder_problem(path: str | Path, key: str) -> str | None:
    """Why ``path`` is not a loadable Hugging Face model folder (config, weights, tokenizer), or None."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        return f"{key}: {p} does not exist (a Hugging Face model folder: config.json, *.safetensors, tokenizer files)"
    if not p.is_dir():
        return f"{key}: {p} is a file, not a Hugging Face model folder"
    try:
        conf = json.loads((p / "config.json").read_text())
    except FileNotFoundError:
        return f"{key}: {p} is not a Hugging Face model folder (no config.json)"
    except (OSError, ValueError) as e:
        return f"{key}: {p / 'config.json'} is not valid JSON ({e})"
    if not isinstance(conf, dict) or "model_type" not in conf:
        return f"{key}: {p / 'config.json'} has no model_type: not a Hugging Face model config"
    weights = sorted(p.glob("*.safetensors")) + sorted(p.glob("pytorch_model*.bin"))
    if not weights:
        return f"{key}: {p} holds no weights (*.safetensors or pytorch_model*.bin)"
    for f in weights:
        if f.suffix == ".safetensors" and (why := _safetensors_ok(f)):
            return f"{key}: {f} {why}"
    if not any((p / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        return f"{key}: {p} has no tokenizer files (tokenizer.json or tokenizer_config.json)"
    return _shapes_problem(p, key, [f for f in weights if f.suffix == ".safetensors"])


def _shapes_problem(p: Path, key: str, files: list[Path]) -> str | None:
    """A tensor that both the safetensors headers and config.json name, with another shape in
    each: transformers refuses the folder when it loads it, which may be after an hour of
    fine-tuning the other model; read from the headers and the model built on the meta device."""
    try:
        from transformers import AutoConfig

        from unlearn.plan.arch import meta_model

        expected = {n: list(t.shape) for n, t in meta_model(AutoConfig.from_pretrained(str(p))).state_dict().items()}
    except Exception:  # noqa: BLE001  (an architecture this transformers cannot build: the loader says why)
        return None
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            want = expected.get(name)
            if want is not None and isinstance(info, dict) and list(info.get("shape", want)) != want:
                return (
                    f"{key}: {f} holds {name} of shape {info['shape']}, where its config.json makes it {want}: "
                    "is config.json for another model size?"
                )
    return None


def check_paths(cfg: DictConfig, problems: Problems) -> None:
    for role in ("target", "oracle"):
        path = OmegaConf.select(cfg, f"benchmark.{role}.path", default=None, throw_on_missing=False)
        if (
            isinstance(path, str)
            and path
            and path != "???"
            and (why := model_folder_problem(path, f"benchmark.{role}.path"))
        ):
            problems.add(why)
    ev = OmegaConf.select(cfg, "benchmark.oracle.eval_file", default=None, throw_on_missing=False)
    if isinstance(ev, str) and ev != "???" and not Path(ev).expanduser().is_file():
        problems.add(
            f"benchmark.oracle.eval_file: {ev} is not a file (an eval_oracle.json of a previous run or task=eval)"
        )
    provider = OmegaConf.select(cfg, "smoothing.provider", default=None, throw_on_missing=False)
    if isinstance(provider, DictConfig) and str(provider.get("_target_", "")).endswith("FileNormal"):
        p = OmegaConf.select(cfg, "smoothing.provider.path", default=None, throw_on_missing=False)
        if isinstance(p, str) and p != "???" and not Path(p).expanduser().is_file():
            problems.add(f"smoothing.provider.path: {p} is not a file (a JSONL file of {{id, normal}} lines)")
    cache = OmegaConf.select(cfg, "paths.cache_dir", default=None, throw_on_missing=False)
    if isinstance(cache, str) and (why := check_writable_dir(cache, "paths.cache_dir")):
        problems.add(why)


# -- options that do not go together --------------------------------------------------------------
def check_presets(cfg: DictConfig, problems: Problems) -> None:
    """A preset that fits one benchmark (``preset.benchmark``) names it when used with another."""
    want = OmegaConf.select(cfg, "preset.benchmark", default=None)
    have = OmegaConf.select(cfg, "benchmark.name", default=None)
    if want and have and want != have:
        name = OmegaConf.select(cfg, "preset.name", default="this")
        problems.add(
            f"preset.benchmark: experiment={name} is for benchmark={want} (it sets {want}-only keys), got "
            f"benchmark={have}: drop benchmark={have} or the experiment preset"
        )


def check_together(cfg: DictConfig, problems: Problems) -> None:
    """Settings that have no effect with the other options chosen (cheap, from the config alone)."""
    if OmegaConf.select(cfg, "train.keep_checkpoint", default=False) is True and not OmegaConf.select(
        cfg, "train.checkpoint_every", default=0
    ):
        problems.add(
            "train.keep_checkpoint=true has no effect with train.checkpoint_every=0 (no checkpoints are written): set "
            "checkpoint_every > 0"
        )
    if (
        OmegaConf.select(cfg, "save_model", default=False) is True
        and OmegaConf.select(cfg, "task", default=None) == "eval"
    ):
        problems.add("save_model=true has no effect with task=eval (the evaluated model is not changed)")


def check_start_below_guard(step: Any, objective: Any, problems: Problems) -> None:
    """A loss whose value before any update (``loss_at_reference``: NPO's ``(2/β)·ln 2``) is past
    ``train.max_abs_loss`` would have the divergence guard record the run as diverged at step 0."""
    limit = step.guard.max_abs_loss
    for task in ("forget", "retain"):
        component = getattr(objective, task, None)
        start = getattr(component, "loss_at_reference", None)
        if start is None or abs(start()) <= limit:
            continue
        problems.add(
            f"train.max_abs_loss={limit:g} is below {task} loss {component!r}'s value before any update, "
            f"{start():.6g}, so the divergence guard would stop the run at step 0 as diverged: set "
            f"train.max_abs_loss above it (e.g. {10 ** math.ceil(math.log10(abs(start()) * 10)):.0e}), or .inf to "
            "watch for non-finite values only"
        )


def check_step_together(step: Any, combiner: Any, objective: Any, problems: Problems) -> None:
    """``train.retain_ema`` needs two tasks and a combiner that takes the reference gradient;
    ``train.stream=true`` a combiner that can stream."""
    from unlearn.training.module import check_combiner

    if step is None:
        return
    if objective is not None:
        check_start_below_guard(step, objective, problems)
    if step.stream and combiner is not None:  # train.stream=true with a combiner that cannot stream
        with problems.collect():
            check_combiner(step, combiner)
        return
    if not step.retain_ema:
        return
    if objective is not None and (objective.forget is None or objective.retain is None):
        problems.add(
            f"train.retain_ema={step.retain_ema!r} has no effect with a single task (forget or retain is 'none': the "
            "combiner is bypassed): set train.retain_ema=null"
        )
        return
    if combiner is not None:
        with problems.collect():
            check_combiner(step, combiner)


def validate(cfg: DictConfig, problems: Problems | None = None) -> Problems:
    """Run every config-level check; raise them together unless a ``problems`` collector is given."""
    own = problems is None
    problems = problems if problems is not None else Problems()
    check_presets(cfg, problems)
    check_values(cfg, problems)
    check_known_keys(cfg, problems)
    check_targets(cfg, problems)
    check_paths(cfg, problems)
    check_together(cfg, problems)
    if own:
        problems.raise_if_any()
    return problems


# -- data -----------------------------------------------------------------------------------------
def check_splits(evaluator: Any, splits: Mapping[str, Any]) -> None:
    """The splits the evaluator reads exist and are not empty (before any fine-tuning): an empty
    holdout makes forget quality and MIA impossible, an empty forget split makes every forget metric so."""
    problems = Problems()
    for attr in ("forget", "retain", "holdout", "utility"):
        names = getattr(evaluator, attr, None)
        for name in (
            [names] if isinstance(names, str) else list(names or []) if isinstance(names, (list, tuple)) else []
        ):
            if name in splits and len(splits[name]) == 0:
                problems.add(
                    f"benchmark.eval.{attr}: split {name!r} is empty, so its metrics cannot be computed (check "
                    "benchmark.data: e.g. n_holdout, forget_fraction)"
                )
    problems.raise_if_any()


def require(cfg: DictConfig, key: str) -> Any:
    """``cfg.<key>``, checked by its rule in :data:`RULES` (for code that runs without the whole pass,
    e.g. ``python -m unlearn.plan``); the error names the key and what is allowed."""
    value = OmegaConf.select(cfg, key, default=None)
    if not RULES[key].ok(value):
        raise ConfigError(f"{key} must be {RULES[key].allowed}, got {value!r}")
    return value
