"""Every config file composes and every ``_target_`` in it instantiates; presets and command-line
overrides combine as documented; bad input stops with a message naming the key, before any model is
built."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import CONF, compose, job_config
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from unlearn.config import ConfigError, build
from unlearn.evaluator import Evaluator
from unlearn.job import build_job
from unlearn.rundir import RunDir

GROUP_FILES = sorted(p for p in CONF.rglob("*.yaml") if p.parent != CONF)


def _group_and_option(path: Path) -> tuple[str, str]:
    """Experiment presets are organised in sub-folders (`experiment=sago_wmdp/bio_ga_sum`); any
    other sub-folder is a nested group (`smoothing/provider=random`)."""
    rel = path.relative_to(CONF).with_suffix("")
    if rel.parts[0] == "experiment":
        return "experiment", "/".join(rel.parts[1:])
    return rel.parent.as_posix(), rel.name


def _override(path: Path) -> str:
    return "=".join(_group_and_option(path))


def test_conf_has_the_groups_the_framework_documents():
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert {
        "model",
        "method",
        "benchmark",
        "combiner",
        "forget",
        "retain",
        "smoothing",
        "trainer",
        "logger",
        "experiment",
    } <= groups


#: options that only build beside another one (the pairing their file documents)
PARTNERS = {"retain=rmu": ["forget=rmu"]}


def _targets(node: Any, key: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every node with a ``_target_``, outermost first: Hydra instantiates what lies below one itself,
    unless it says ``_recursive_: false``, whose children the code builds later (walked here too)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield key, node
            if node.get("_recursive_", True):
                return
        for k in node.keys():
            if not str(k).startswith("_"):
                yield from _targets(node._get_node(k), f"{key}.{k}" if key else str(k))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _targets(node._get_node(i), f"{key}.{i}")


def _fill_required(node: DictConfig, stand_in: str) -> None:
    """``???`` (a value the user must give, such as a data file) becomes a stand-in path."""
    for k in list(node.keys()):
        if OmegaConf.is_missing(node, k):
            node[k] = stand_in
        elif isinstance(node._get_node(k), DictConfig):
            _fill_required(node[k], stand_in)


def instantiate_targets(cfg: DictConfig, stand_in: str) -> list[str]:
    """Instantiate every ``_target_`` node of a composed config, as the job does (``instantiate``,
    recursive, no extra arguments): losses, combiners, smoothing and providers, the model spec
    (which loads no weights until asked), the benchmark's data, evaluator and collapse check, the
    trainer strategy, and the launcher, sweeper and callbacks from conf/. Hydra's own default
    plugins (``hydra._internal``) are Hydra's business. Returns what was built, by key."""
    built = []
    for key, node in _targets(cfg):
        if str(node._target_).startswith("hydra._internal."):
            continue
        node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))  # resolved against the whole config
        _fill_required(node, stand_in)
        obj = instantiate(node)
        if node.get("_partial_", False):  # a partial binds nothing: check its keywords against the target
            inspect.signature(obj.func).bind_partial(*obj.args, **obj.keywords)
        built.append(f"{key}: {type(obj).__name__}")
    return built


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: p.relative_to(CONF).as_posix())
def test_every_config_file_composes_and_its_targets_instantiate(path, tmp_path):
    cfg = compose([*PARTNERS.get(_override(path), []), _override(path), f"paths.cache_dir={tmp_path}"])
    group, option = _group_and_option(path)
    assert cfg.hydra.runtime.choices[group] == option
    OmegaConf.to_container(cfg, resolve=False)  # the whole tree is well-formed
    built = instantiate_targets(cfg, str(tmp_path / "stand-in"))
    assert {"forget", "retain", "combiner", "smoothing", "model.spec", "benchmark.data", "benchmark.eval"} <= {
        b.split(":")[0] for b in built
    }


@pytest.mark.parametrize(
    "planted,fragment",
    [
        ("_target_: unlearn.combiners.Sum\nalpah: 1.0\n", "alpah"),  # a misspelt keyword
        (
            "# @package _global_\nbenchmark:\n  eval:\n    _target_: unlearn.eval.qa.QAEvaluatr\n",
            "QAEvaluatr",
        ),  # a wrong _target_, deep in an experiment
    ],
)
def test_a_planted_wrong_keyword_or_target_fails_the_instantiation_check(tmp_path, planted, fragment):
    """The check above can fail: the same file composes cleanly, and only instantiation catches it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    group = "combiner" if planted.startswith("_target_") else "experiment"
    (conf / group / "planted.yaml").write_text(planted)
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = hydra_compose(
            "config", overrides=[f"{group}=planted", f"paths.cache_dir={tmp_path}"], return_hydra_config=True
        )
    with pytest.raises(InstantiationException, match=fragment):
        instantiate_targets(cfg, str(tmp_path / "stand-in"))


def test_default_composes_and_builds_without_a_model(tmp_path, no_model_build):
    cfg = job_config([f"paths.cache_dir={tmp_path}"])
    s = build_job(cfg, RunDir(tmp_path / "run"))
    assert type(s.combiner).__name__ == "SAGO"  # the default method preset
    assert s.objective.tasks == ["retain", "forget"]


def test_method_preset_picks_components_and_the_command_line_still_wins():
    cfg = compose(["method=ga"])
    assert cfg.hydra.runtime.choices.retain == "none" and cfg.hydra.runtime.choices.forget == "ga"
    cfg = compose(["method=ga", "retain=nll", "combiner=sago"])
    assert cfg.hydra.runtime.choices.retain == "nll" and cfg.hydra.runtime.choices.combiner == "sago"
    cfg = compose(["combiner=pcgrad", "method=gd"])  # order on the command line does not matter
    assert cfg.hydra.runtime.choices.combiner == "pcgrad"


@pytest.mark.parametrize(
    "overrides,key,expected",
    [
        (["method=sago"], "forget.beta", 0.5),  # the preset's tuned SimNPO beta
        (["method=sago", "forget.beta=0.1"], "forget.beta", 0.1),  # the command line wins
        (["method=sago", "forget=npo"], "forget.beta", 0.1),  # NPO keeps its own beta
        (["method=simnpo", "experiment=sago_wmdp/bio_simnpo_sago"], "forget.beta", 0.02),  # a paper preset wins
        (["method=rmu"], "forget.layer", 2),
        (["method=rmu", "forget.layer=1"], "forget.layer", 1),
        (["method=sga"], "smoothing.rate", -1.0),
        (["method=sga", "smoothing.rate=0.5"], "smoothing.rate", 0.5),
        (["method=gd"], "smoothing.rate", 0.0),
    ],
)
def test_a_method_tunes_only_the_options_it_chose(overrides, key, expected):
    assert OmegaConf.select(compose(overrides), key) == expected


@pytest.mark.parametrize(
    "overrides,absent",
    [
        (["method=sago", "forget=ga"], "forget.beta"),  # GA takes no beta: nothing may leak into it
        (["method=sga", "smoothing=none"], "smoothing.rate"),
    ],
)
def test_a_method_tuning_does_not_leak_into_another_option(tmp_path, no_model_build, overrides, absent):
    cfg = job_config([f"paths.cache_dir={tmp_path}", *overrides])
    assert OmegaConf.select(cfg, absent) is None
    build_job(cfg, RunDir(tmp_path / "run"))  # the components build with the other option


def test_sweep_dirs_are_per_job_and_folder_safe():
    cfg = compose(["combiner=sago", "benchmark.target.path=/a b/c"])
    assert cfg.hydra.sweep.dir.startswith("multirun/")
    from unlearn.hydra_setup import safe_name

    assert safe_name("benchmark.target.path=/a b/c,combiner=sago") == "benchmark.target.path=_a_b_c,combiner=sago"
    assert "${hydra.job.num}" in OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]


BAD = [
    (["optim.lr=0"], "optim.lr must be a number > 0"),
    (["optim.lr=-1e-5"], "optim.lr must be a number > 0"),
    (["smoothing.rate=1.5"], "smoothing.rate must be <= 1"),
    (["combiner.alpha=-1"], "combiner.alpha must be >= 0"),
    (["combiner=sago", "combiner.gamma=-0.5"], "combiner.gamma must be >= 0"),
    (["train.steps=0"], "train.steps must be an integer > 0"),
    (["train.epochs=0"], "train.epochs must be a number > 0"),
    (["task=train"], "task must be one of"),
    (["smoothing.K=1"], "smoothing.K must be an integer >= 2"),
    (["model.dtype=fp8"], "model.dtype must be"),
    (["trainer.precision=16-mixed"], "trainer.precision=16-mixed is not supported"),
    (["+combiner.beta=2"], r"combiner\.beta: SAGO takes no argument 'beta' \(it takes: alpha, gamma"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_name_the_key_before_any_model_is_built(tmp_path, no_model_build, overrides, message):
    cfg = job_config([*overrides, f"paths.cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=message):
        build_job(cfg, RunDir(tmp_path / "run"))


@pytest.mark.parametrize("target", ["_stubs.PositionalEvaluator", "unlearn.eval.collapse.CollapseCheck"])
def test_an_evaluator_that_is_not_one_is_refused_before_any_model_is_built(tmp_path, no_model_build, target):
    cfg = job_config([f"paths.cache_dir={tmp_path}"])
    OmegaConf.update(cfg, "benchmark.eval", {"_target_": target}, merge=False)
    name = target.rsplit(".", 1)[1]
    with pytest.raises(
        ConfigError, match=rf"benchmark\.eval: _target_ must build an unlearn\.evaluator\.Evaluator .*got a {name}"
    ):
        build_job(cfg, RunDir(tmp_path / "run"))


def test_every_benchmarks_evaluator_is_one_and_only_the_copyright_one_evaluates_a_diverged_run():
    for p in sorted((CONF / "benchmark").glob("*.yaml")):
        evaluator = build(job_config([f"benchmark={p.stem}"]), "benchmark.eval")
        assert isinstance(evaluator, Evaluator), p.stem
        assert evaluator.reports_diverged is (p.stem == "harry_potter"), p.stem


def test_a_missing_required_value_names_the_key(tmp_path, no_model_build):
    cfg = job_config([f"paths.cache_dir={tmp_path}"])
    OmegaConf.update(cfg, "benchmark.target.path", "???")
    with pytest.raises(ConfigError, match=r"benchmark.target.path: a value is required"):
        build_job(cfg, RunDir(tmp_path / "run"))


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["combiner=nope"], "combiner"),
        (["combiner.alpah=1"], "alpah"),
    ],
)
def test_unknown_options_and_keys_are_refused_by_composition(overrides, fragment):
    with pytest.raises(HydraException, match=fragment):
        compose(overrides)


PRESETS = [p for p in GROUP_FILES if _group_and_option(p)[0] == "experiment" and not p.name.startswith("_")]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: _group_and_option(p)[1])
def test_every_preset_passes_the_checks_before_training(path, tmp_path, no_model_build):
    """A paper preset run as shipped sets up: no check (the divergence guard's limit against NPO's
    starting loss at beta = 1e-4 included) stops it. WMDP-Bio's gated corpus is the one value a
    user must give."""
    name = _group_and_option(path)[1]
    overrides = [f"experiment={name}", f"paths.cache_dir={tmp_path}"]
    data = compose(overrides).benchmark.data
    if OmegaConf.is_missing(data, "forget_path"):
        corpus = tmp_path / "bio.jsonl"
        corpus.write_text('{"text": "a forget document"}\n')
        overrides.append(f"benchmark.data.forget_path={corpus}")
    build_job(job_config(overrides), RunDir(tmp_path / "run"))


SWEEP_PRESETS = [p for p in GROUP_FILES if _group_and_option(p)[0] == "experiment" and "sweeper:" in p.read_text()]


@pytest.mark.parametrize("path", SWEEP_PRESETS, ids=lambda p: _group_and_option(p)[1])
def test_every_value_a_preset_sweeps_over_sets_up(path, tmp_path, no_model_build):
    """Each value in a preset's `hydra.sweeper.params` gives a job whose setup validates and builds
    (losses, combiner, providers), so a sweep does not fail job by job on a typo."""
    name = _group_and_option(path)[1]
    params = compose([f"experiment={name}"]).hydra.sweeper.params
    assert params, name
    for key, values in params.items():
        for value in str(values).split(","):
            cfg = job_config([f"experiment={name}", f"{key}={value}", f"paths.cache_dir={tmp_path}"])
            s = build_job(cfg, RunDir(tmp_path / "run"))
            if key == "method":
                assert cfg.method.name == value
            if key == "smoothing.rate":
                assert s.objective.smoothing.rate == float(value)


FINETUNE_BAD = [
    (["benchmark.finetune.batch_size=0"], r"benchmark\.finetune\.batch_size must be an integer > 0, got 0"),
    (["benchmark.finetune.lr=0"], r"benchmark\.finetune\.lr must be a number > 0 \(finite\), got 0\.0"),
    (["benchmark.finetune.epochs=-1"], r"benchmark\.finetune\.epochs must be a number > 0 \(finite\), got -1\.0"),
    (["+benchmark.finetune.max_length=0"], r"benchmark\.finetune\.max_length must be an integer > 0"),
    (["benchmark.finetune.schedule=step"], r"benchmark\.finetune\.schedule must be one of"),
    (["benchmark.finetune.warmup_ratio=1.5"], r"benchmark\.finetune\.warmup_ratio must be a number in \[0, 1\)"),
]


@pytest.mark.parametrize("overrides,message", FINETUNE_BAD, ids=[" ".join(o) for o, _ in FINETUNE_BAD])
def test_a_bad_finetune_recipe_names_the_key_before_any_model_is_built(tmp_path, no_model_build, overrides, message):
    cfg = job_config([*overrides, f"paths.cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=message):
        build_job(cfg, RunDir(tmp_path / "run"))


@pytest.mark.parametrize(
    "overrides,used",
    [
        ([], True),
        (["benchmark.target.path=/m"], True),  # the oracle is still fine-tuned
        (["benchmark.target.path=/m", "benchmark.oracle.eval_file=/e.json"], False),
        (
            ["benchmark.target.path=/m", "benchmark.oracle.eval_file=/e.json", "task=finetune"],
            True,
        ),  # builds the oracle anyway
        (["benchmark.target.finetune_on=null", "benchmark.oracle.finetune_on=null"], False),
    ],
)
def test_the_finetune_recipe_is_checked_only_where_it_is_used(tmp_path, no_model_build, overrides, used):
    from _stubs import fake_model_folder

    fake_model_folder(tmp_path / "m")
    (tmp_path / "e.json").write_text("{}")
    overrides = [o.replace("=/m", f"={tmp_path}/m").replace("=/e.json", f"={tmp_path}/e.json") for o in overrides]
    cfg = job_config([*overrides, "benchmark.finetune.batch_size=0", f"paths.cache_dir={tmp_path}"])
    if used:
        with pytest.raises(ConfigError, match="benchmark.finetune.batch_size"):
            build_job(cfg, RunDir(tmp_path / "run"))
    else:
        build_job(cfg, RunDir(tmp_path / "run"))


@pytest.mark.parametrize(
    "overrides,role",
    [
        (["benchmark.roles.forget=[forgot]"], "forget"),
        (["benchmark.roles.retain=[retain,retian]"], "retain"),
        (["method=sga", "benchmark.roles.normal_pool=[generl]"], "normal_pool"),
    ],
)
def test_a_role_naming_no_split_stops_before_any_fine_tuning(tmp_path, no_model_build, overrides, role):
    from unlearn import pipeline

    cfg = job_config([*overrides, f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"])
    s = build_job(cfg, RunDir(tmp_path / "run"))
    with pytest.raises(
        ConfigError, match=rf"benchmark\.roles\.{role}: the benchmark has no split '\w+' \(it has \[.*'retain'.*\]\)"
    ):
        pipeline.run_unlearn(s, {})  # the toy benchmark builds its splits without a model
    assert not (tmp_path / "cache" / "models").exists()


def test_a_role_the_method_does_not_use_is_not_checked(tmp_path, no_model_build, toy_splits):
    from unlearn.phases import check_roles

    cfg = job_config(["method=ga", "benchmark.roles.retain=[retian]", f"paths.cache_dir={tmp_path}"])
    check_roles(build_job(cfg, RunDir(tmp_path / "run")), toy_splits)  # GA has no retain loss
    cfg = job_config(["method=gd", "benchmark.roles.retain=[retian]", f"paths.cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"benchmark\.roles\.retain"):
        check_roles(build_job(cfg, RunDir(tmp_path / "run")), toy_splits)
