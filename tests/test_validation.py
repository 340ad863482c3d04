"""The validation pass (unlearn/validation.py): every bad input is refused with a message naming the
key, the value and what is allowed, all of them at once, before any model is built; and the sweep
niceties of issue 13 §4 (job folder names, progress lines in a redirected log, torch threads)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from _stubs import fake_model_folder
from conftest import job_config, run_cli

from unlearn.config import ConfigError
from unlearn.job import build_job
from unlearn.rundir import RunDir
from unlearn.validation import Problems


def _garbage_config(tmp: Path) -> Path:
    p = fake_model_folder(tmp / "garbage_config")
    (p / "config.json").write_text("{not json")
    return p


def _garbage_weights(tmp: Path) -> Path:
    p = fake_model_folder(tmp / "garbage_weights")
    (p / "model.safetensors").write_bytes(b"\xff" * 64)
    return p


def _no_weights(tmp: Path) -> Path:
    p = fake_model_folder(tmp / "no_weights")
    (p / "model.safetensors").unlink()
    return p


def _a_file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("x")
    return tmp / "a_file"


MAKE = {
    "garbage_config": _garbage_config,
    "garbage_weights": _garbage_weights,
    "no_weights": _no_weights,
    "a_file": _a_file,
}

# (overrides, expected fragment): every one fails on the code before the validation pass (it ran,
# crashed after the models were loaded, or raised an error that did not name the key)
BAD = [
    # numbers: finite and in range
    (["train.epochs=inf"], r"train\.epochs must be a number > 0 \(finite; .*\) or null, got inf"),
    (["seed=4294967296"], r"seed must be an integer in \[0, 4294967295\] \(numpy's seed range\), got 4294967296"),
    (["benchmark.data.seed=4294967296"], r"benchmark\.data\.seed must be an integer in \[0, 4294967295\]"),
    (["benchmark.finetune.seed=4294967296"], r"benchmark\.finetune\.seed must be an integer in \[0, 4294967295\]"),
    (["benchmark.finetune.epochs=inf"], r"benchmark\.finetune\.epochs must be a number > 0 \(finite\), got inf"),
    (["optim.weight_decay=nan"], r"optim\.weight_decay must be a number >= 0 \(finite\), got nan"),
    (["combiner.alpha=nan"], r"combiner\.alpha must be a finite number, got nan"),
    (["optim.lr=inf"], r"optim\.lr must be a number > 0 \(finite\), got inf"),
    (["optim.warmup_ratio=nan"], r"optim\.warmup_ratio must be a number in \[0, 1\) \(finite\), got nan"),
    (["combiner=sago", "combiner.kappa=inf"], r"combiner\.kappa must be a finite number, got inf"),
    (["method=npo", "forget.beta=nan"], r"forget\.beta must be a finite number, got nan"),
    (["train.retain_ema=nan"], r"train\.retain_ema must be a decay in \[0, 1\) or null, got nan"),
    # strings among the allowed values; integers are integers (in the typed sections their schema
    # says so at composition: test_a_wrong_type_in_a_typed_section_stops_composition)
    (
        ["train.clip_norm=-1"],
        r"train\.clip_norm must be a number > 0 \(finite; global norm of the combined update\) or null, got -1\.0",
    ),
    (["trainer.num_workers=-1"], r"trainer\.num_workers must be an integer >= 0, got -1"),
    (["trainer.accelerator=gpux"], r"trainer\.accelerator must be one of \('auto', 'cpu', .*\), got 'gpux'"),
    (
        ["trainer.threads=0"],
        r"trainer\.threads must be an integer > 0 \(torch threads; null = torch's choice\) or null, got 0",
    ),
    (["trainer.progress_every=0"], r"trainer\.progress_every must be an integer > 0"),
    (["method=sga", "smoothing.K=2.5"], r"smoothing\.K must be int, got 2\.5"),
    (["save_model=maybe"], r"save_model must be true or false, got 'maybe'"),
    # keys that nothing reads
    (["+unknown.key=1"], r"unknown: no component reads this key \(allowed at the top level: benchmark, combiner"),
    (["+train.lr=1"], r"train\.lr: no component reads this key \(allowed under train: accumulate, batch_size"),
    (["+optim.momentum=0.9"], r"optim\.momentum: no component reads this key \(allowed under optim: betas, lr"),
    (["+trainer.foo=1"], r"trainer\.foo: no component reads this key"),
    (
        ["+benchmark.data.n_peple=3"],
        r"benchmark\.data\.n_peple: ToyBenchmarkData takes no argument 'n_peple' \(it takes: .*n_people",
    ),
    (["method=ga", "+forget.beta=0.1"], r"forget\.beta: GA takes no argument 'beta' \(it takes: nothing\)"),
    (
        ["+model.prompt.sytem=hi"],
        r"model\.prompt\.sytem: no component reads this key \(allowed: template, answer_prefix, chat, system\)",
    ),
    (
        ["+benchmark.roles.normal=[retain]"],
        r"benchmark\.roles\.normal: no component reads this key \(allowed under benchmark\.roles: forget, normal_pool, "
        r"retain\)",
    ),
    # options that have no effect together
    (
        ["train.retain_ema=0.9", "combiner=sum"],
        r"train\.retain_ema=0\.9 has no effect with combiner Sum, which takes no reference gradient",
    ),
    (["train.retain_ema=0.9", "method=ga"], r"train\.retain_ema=0\.9 has no effect with a single task"),
    (
        ["train.keep_checkpoint=true", "train.checkpoint_every=0"],
        r"train\.keep_checkpoint=true has no effect with train\.checkpoint_every=0",
    ),
    (["task=eval", "save_model=true"], r"save_model=true has no effect with task=eval"),
    (
        ["method=rmu", "forget.layer=1", "forget.update_layers=[1,2]"],
        r"forget\.update_layers \[2\] lie above forget\.layer=1: the forward pass stops at forget\.layer",
    ),
    (
        ["method=npo", "forget.beta=1e-4"],
        r"train\.max_abs_loss=10000 is below forget loss NPO\(beta=0\.0001\)'s value before any update, 13862\.9, "
        r"so the divergence guard would stop the run at step 0 as diverged: set train\.max_abs_loss above it "
        r"\(e\.g\. 1e\+06\)",
    ),
    # paths exist and have the right form
    (
        ["benchmark.target.path={tmp}/garbage_config"],
        r"benchmark\.target\.path: .*garbage_config/config\.json is not valid JSON",
    ),
    (
        ["benchmark.target.path={tmp}/garbage_weights"],
        r"benchmark\.target\.path: .*garbage_weights/model\.safetensors has no valid safetensors header",
    ),
    (["benchmark.target.path={tmp}/no_weights"], r"benchmark\.target\.path: .*no_weights holds no weights"),
    (["benchmark.target.path={tmp}/nowhere"], r"benchmark\.target\.path: .*nowhere does not exist"),
    (
        ["benchmark.oracle.path={tmp}/a_file"],
        r"benchmark\.oracle\.path: .*a_file is a file, not a Hugging Face model folder",
    ),
    (["benchmark.oracle.eval_file={tmp}/nowhere.json"], r"benchmark\.oracle\.eval_file: .*nowhere\.json is not a file"),
    (
        ["method=sga", "smoothing/provider=file", "smoothing.provider.path={tmp}/nowhere.jsonl"],
        r"smoothing\.provider\.path: .*nowhere\.jsonl is not a file",
    ),
    (
        ["paths.cache_dir={tmp}/a_file/cache"],
        r"paths\.cache_dir: .*a_file/cache cannot be a folder: .*a_file is a file",
    ),
    # presets that fit one benchmark say so
    (
        ["experiment=smoke", "benchmark=tofu"],
        r"preset\.benchmark: experiment=smoke is for benchmark=toy .*got benchmark=tofu",
    ),
    (
        ["experiment=sga/tofu", "benchmark=toy"],
        r"preset\.benchmark: experiment=sga/tofu is for benchmark=tofu .*got benchmark=toy",
    ),
]


def _resolve(overrides: list[str], tmp: Path) -> list[str]:
    for name, make in MAKE.items():
        if any(f"{{tmp}}/{name}" in o for o in overrides):
            make(tmp)
    out = [o.replace("{tmp}", str(tmp)) for o in overrides]
    return out if any(o.startswith("paths.cache_dir=") for o in out) else [*out, f"paths.cache_dir={tmp / 'cache'}"]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_is_refused_before_any_model_is_built(tmp_path, no_model_build, overrides, message):
    cfg = job_config(_resolve(overrides, tmp_path))
    with pytest.raises(ConfigError, match=message):
        build_job(cfg, RunDir(tmp_path / "run"))


def test_every_error_is_reported_at_once(tmp_path, no_model_build):
    cfg = job_config(
        [
            "optim.lr=inf",
            "seed=-1",
            "+train.foo=1",
            "train.clip_norm=0",
            "combiner=sago",
            "combiner.gate=medium",
            f"paths.cache_dir={tmp_path}",
        ]
    )
    with pytest.raises(ConfigError) as e:
        build_job(cfg, RunDir(tmp_path / "run"))
    msg = str(e.value)
    assert msg.startswith("5 errors in the config:"), msg
    for fragment in (
        "optim.lr must be",
        "seed must be",
        "train.foo: no component",
        "train.clip_norm must be",
        "combiner.gate must be one of",
    ):
        assert fragment in msg, (fragment, msg)
    assert "not supported between" not in msg  # a constructor's echo of a key already named is dropped


TYPE_ERRORS = [
    ("train.clip_norm=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ("train.batch_size=2.5", "Value '2.5' of type 'float' could not be converted to Integer"),
    ("train.checkpoint_every=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
    ("trainer.log_every_n_steps=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("train.stream=maybe", "Value 'maybe' is not a valid bool"),
    ("optim.lr=fast", "Value 'fast' of type 'str' could not be converted to Float"),
    ("benchmark.finetune.seed=one", "Value 'one' of type 'str' could not be converted to Integer"),
]


@pytest.mark.parametrize("override,cause", TYPE_ERRORS, ids=[o for o, _ in TYPE_ERRORS])
def test_a_wrong_type_in_a_typed_section_stops_composition(override, cause):
    """train, optim, trainer and benchmark.finetune have schemas (unlearn/schema.py): OmegaConf
    refuses a wrong type while composing, naming the key and the value."""
    from conftest import compose
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match=re.escape(override)) as e:
        compose([override])
    assert cause in str(e.value.__cause__) and f"full_key: {override.split('=')[0]}" in str(e.value.__cause__)


def test_good_paths_pass(tmp_path, no_model_build):
    fake_model_folder(tmp_path / "m")
    (tmp_path / "normal.jsonl").write_text('{"id": "a", "normal": ["x"]}\n')
    build_job(
        job_config([f"benchmark.target.path={tmp_path}/m", f"paths.cache_dir={tmp_path}/new/cache"]),
        RunDir(tmp_path / "run"),
    )
    build_job(
        job_config(
            [
                "method=sga",
                "smoothing/provider=file",
                f"smoothing.provider.path={tmp_path}/normal.jsonl",
                f"paths.cache_dir={tmp_path}",
            ]
        ),
        RunDir(tmp_path / "run"),
    )


def test_an_empty_holdout_stops_before_any_fine_tuning(tmp_path, no_model_build):
    from unlearn import pipeline

    cfg = job_config(["benchmark.data.n_holdout=0", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"])
    s = build_job(cfg, RunDir(tmp_path / "run"))
    with pytest.raises(
        ConfigError, match=r"benchmark\.eval\.holdout: split 'holdout' is empty, so its metrics cannot be computed"
    ):
        pipeline.run_unlearn(s, {})
    assert not (tmp_path / "cache" / "models").exists()


def test_a_broken_jsonl_line_is_named(tmp_path):
    from unlearn.benchmarks.hub import _read_json_rows
    from unlearn.benchmarks.sources import DataUnavailable

    f = tmp_path / "rows.json"
    f.write_text('{"a": 1}\n{"a": 2, "b"\n{"a": 3}\n')
    with pytest.raises(DataUnavailable, match=r"rows\.json:2: .*line 2"):
        _read_json_rows(f, "train")


def test_the_run_directory_is_checked_before_anything_is_written(tmp_path):
    from unlearn.validation import check_writable_dir

    (tmp_path / "f").write_text("x")
    assert "is a file" in check_writable_dir(tmp_path / "f" / "run", "hydra.run.dir")
    assert "not a possible folder name" in check_writable_dir(tmp_path / ("x" * 300), "hydra.run.dir")
    assert check_writable_dir(tmp_path / "new" / "run", "hydra.run.dir") is None


@pytest.mark.parametrize("run_dir,fragment", [("f/run", "is a file"), ("x" * 300, "not a possible folder name")])
def test_an_impossible_run_directory_is_a_config_error_not_a_traceback(tmp_path, run_dir, fragment):
    (tmp_path / "f").write_text("x")
    proc = run_cli([f"hydra.run.dir={run_dir}"], cwd=tmp_path, cache=tmp_path / "cache")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config error: hydra.run.dir: " in proc.stderr and fragment in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_reports_all_errors_without_a_traceback(tmp_path):
    proc = run_cli(
        ["optim.lr=inf", "seed=4294967296", "+unknown.key=1", "hydra.run.dir=run"],
        cwd=tmp_path,
        cache=tmp_path / "cache",
    )
    assert proc.returncode == 2
    assert (
        "3 errors in the config" in proc.stderr
        and "optim.lr must be" in proc.stderr
        and "seed must be" in proc.stderr
        and "unknown: no component" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and "fine-tuning" not in proc.stderr


# -- §4: sweeps a person can read --------------------------------------------------------------
LONG = (
    "benchmark.eval.max_new_tokens=16,benchmark.finetune.epochs=12,benchmark.finetune.warmup_ratio=0.05,"
    "model.prompt.answer_prefix=Answer_,optim.lr=0.001,seed=3,train.max_length=128"
)


def test_a_long_job_name_keeps_the_swept_keys_and_hashes_the_rest():
    from unlearn.sweepnames import job_dirname

    name = job_dirname(LONG, swept=["optim.lr", "seed"])
    assert name.startswith("optim.lr=0.001,seed=3,h") and len(name) <= 120, name
    other = job_dirname(LONG.replace("epochs=12", "epochs=13"), swept=["optim.lr", "seed"])
    assert other != name and other.startswith("optim.lr=0.001,seed=3,h")  # distinct jobs, distinct names
    assert job_dirname("combiner=sum,train.steps=3", swept=["combiner"]) == "combiner=sum,train.steps=3"  # short: whole
    assert len(job_dirname(LONG, swept=[])) <= 120


def test_the_swept_keys_come_from_the_command_line_and_the_sweeper():
    from unlearn.sweepnames import swept_keys

    assert swept_keys(
        ["optim.lr=1e-3,1e-4", "seed=range(3)", "train.steps=3", "model.prompt.system='a,b'"], {"method": "ga,gd"}
    ) == ["method", "optim.lr", "seed"]


def test_a_sweep_with_long_fixed_overrides_names_jobs_by_their_swept_values(tmp_path):
    fixed = [o for o in LONG.split(",") if not o.startswith(("optim.lr", "seed"))]
    # optim.lr < 0: every job stops at validation, in seconds, but gets its folder
    proc = run_cli(
        ["-m", *fixed, "optim.lr=-1,-2", "seed=0,1", "hydra.sweep.dir=sweep"], cwd=tmp_path, cache=tmp_path / "cache"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(names) == 4 and len(set(n.split("_", 1)[1] for n in names)) == 4, names
    for lr, seed in [("-1", "0"), ("-1", "1"), ("-2", "0"), ("-2", "1")]:
        assert any(f"optim.lr={lr},seed={seed},h" in n for n in names), names


def test_progress_lines_reach_a_redirected_stdout_during_the_run(tiny, toy_splits, capsys):
    from unlearn.combiners import Sum
    from unlearn.data.format import PromptFormat, encode_rows
    from unlearn.data.paired import PairedStream
    from unlearn.losses import GA, NLL, Objective
    from unlearn.training.fit import LoopConfig, fit, quiet_lightning, stream_length
    from unlearn.training.module import UnlearnModule
    from unlearn.training.optim import OptimConfig

    quiet_lightning()
    model, tok = tiny
    f, r = (encode_rows(tok, PromptFormat(), toy_splits[k], 64) for k in ("forget", "retain"))
    module = UnlearnModule(
        copy.deepcopy(model), Objective(forget=GA(), retain=NLL()), Sum(), OptimConfig(lr=1e-3, warmup_ratio=0.0)
    )
    fit(
        module,
        PairedStream(f, r, stream_length(4, 1, 4), seed=0),
        tok.pad_token_id,
        4,
        4,
        LoopConfig(accelerator="cpu", progress_every=2),
    )
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[unlearn] step")]
    assert [ln.split()[2] for ln in lines] == ["2/4", "4/4"], lines
    assert "loss/forget=" in lines[0] and "loss/retain=" in lines[0]


def test_trainer_threads_are_set_and_recorded_in_provenance(tmp_path, no_model_build):
    import torch

    from unlearn.__main__ import start

    before = torch.get_num_threads()
    try:
        cfg = job_config(["trainer.threads=1", f"paths.cache_dir={tmp_path}"])
        start(cfg, RunDir(tmp_path / "run"), {"overrides": [], "group": None})
        prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
        assert prov["threads"] == 1 and prov["device"]["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_a_constructors_problem_under_a_section_is_not_taken_for_a_repeat_of_another():
    """combiner.kappa=inf (the table's check) and combiner.alpha=-1 (the constructor's, reported as
    'combiner: combiner.alpha ...') are two problems: the second was dropped as an echo of the
    first, so a user fixed one and met the other on the next run."""
    problems = Problems()
    problems.add("combiner.kappa must be a finite number, got inf")
    problems.add("combiner: combiner.alpha must be >= 0, got -1")
    problems.add("combiner: combiner.kappa must be > 0, got inf")  # an echo of the first: dropped
    assert problems.items == [
        "combiner.kappa must be a finite number, got inf",
        "combiner: combiner.alpha must be >= 0, got -1",
    ]


def test_a_model_folder_whose_weights_have_other_shapes_than_its_config_is_named_up_front(tiny, tmp_path):
    """transformers refused such a folder only when it loaded it, after the oracle's fine-tuning."""
    import json

    from unlearn.models.load import save_checkpoint
    from unlearn.validation import model_folder_problem

    model, tok = tiny
    d = save_checkpoint(model, tok, tmp_path / "m")
    assert model_folder_problem(d, "benchmark.target.path") is None
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 2 * cfg["hidden_size"]}))
    why = model_folder_problem(d, "benchmark.target.path")
    assert why is not None and why.startswith("benchmark.target.path: ") and "where its config.json makes it" in why
