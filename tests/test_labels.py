"""Runs are labelled by the forget, retain and combiner options that ran (unlearn/labels.py), not by
the method preset that picked them: `method=sago combiner=pcgrad` is PCGrad in its folder, its W&B
name and tags, and its report series."""

from __future__ import annotations

import pytest
import yaml
from conftest import compose, run_cli
from omegaconf import OmegaConf, open_dict

from unlearn.labels import job_folder, run_label, wandb_name, wandb_tags
from unlearn.report.collect import frame, load_runs
from unlearn.report.curves import series_name
from unlearn.rundir import write_json


def test_the_label_names_forget_retain_and_combiner_in_that_order():
    assert run_label("simnpo", "nll", "pcgrad") == "simnpo+nll+pcgrad"
    assert run_label("rmu", "none", "sum") != run_label("none", "rmu", "sum")  # each part known by its place
    assert run_label("sub/opt", "nll", "sum") == "sub_opt+nll+sum"  # folder-safe
    assert job_folder("ga+none+sum", "") == "ga+none+sum"
    assert job_folder("simnpo+nll+pcgrad", "combiner=pcgrad,method=sago,seed=1") == "simnpo+nll+pcgrad_seed=1"
    choices = {"forget": "simnpo", "retain": "nll", "combiner": "pcgrad", "method": "sago"}
    assert wandb_name(choices, "toy", "benchmark=toy,combiner=pcgrad,method=sago") == "simnpo+nll+pcgrad-toy"
    assert wandb_tags(choices, "sago", "toy", "tiny") == [
        "method:simnpo+nll",
        "combiner:pcgrad",
        "forget:simnpo",
        "retain:nll",
        "preset:sago",
        "benchmark:toy",
        "model:tiny",
    ]


def _folders(overrides):
    cfg = compose(overrides)
    with open_dict(cfg):
        cfg.hydra.job.num = 3
    return cfg.hydra.run.dir.rsplit("/", 1)[-1].split("_", 1)[1], cfg.hydra.sweep.subdir


@pytest.mark.parametrize(
    "overrides,run,job",
    [
        (["method=sago", "combiner=pcgrad"], "simnpo+nll+pcgrad_toy", "3_simnpo+nll+pcgrad"),
        (["combiner=pcgrad", "method=sago", "seed=1"], "simnpo+nll+pcgrad_toy", "3_simnpo+nll+pcgrad_seed=1"),
        (["method=sago"], "simnpo+nll+sago_toy", "3_simnpo+nll+sago"),
        (["method=ga"], "ga+none+sum_toy", "3_ga+none+sum"),
        (["experiment=sago_rwku/ga_pcgrad"], "ga+nll+pcgrad_rwku", "3_ga+nll+pcgrad_experiment=sago_rwku_ga_pcgrad"),
    ],
)
def test_run_and_sweep_job_folders_name_the_options_that_ran(overrides, run, job):
    assert _folders(overrides) == (run, job)


def _meta(overrides, monkeypatch, tmp_path):
    from hydra.core.hydra_config import HydraConfig

    from unlearn.__main__ import job_meta

    cfg = compose(overrides)
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.runtime.output_dir = str(tmp_path / "job")
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test
    HydraConfig.instance().set_config(cfg)
    return cfg, job_meta(cfg)


def test_wandb_name_and_tags_say_pcgrad_and_the_preset_only_as_preset(monkeypatch, tmp_path):
    _, meta = _meta(["method=sago", "combiner=pcgrad", "seed=2"], monkeypatch, tmp_path)
    assert meta["name"] == "simnpo+nll+pcgrad-toy seed=2"
    assert {"method:simnpo+nll", "combiner:pcgrad", "forget:simnpo", "retain:nll", "preset:sago"} <= set(meta["tags"])
    assert [t for t in meta["tags"] if "sago" in t] == ["preset:sago"]


def _job_dir(root, overrides, fq):
    """A finished job's run directory as the app writes it: config.json, Hydra's record, results."""
    cfg = compose(overrides)
    d = root / f"job_{len(list(root.glob('job_*')))}"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": dict(cfg.hydra.runtime.choices)}}})
    )
    with open_dict(cfg):
        del cfg["hydra"]
    write_json(d / "config.json", OmegaConf.to_container(cfg, resolve=True))
    write_json(d / "provenance.json", {"overrides": overrides})
    write_json(d / "results.json", {"status": "ok", "eval/toy/forget_quality": fq, "eval/toy/model_utility": 0.5})


def test_report_series_name_the_options_that_ran(tmp_path):
    from unlearn.report.__main__ import report

    root = tmp_path / "sweep"
    _job_dir(root, ["method=sago", "combiner=pcgrad", "optim.lr=1e-3"], 0.1)
    _job_dir(root, ["method=sago", "combiner=pcgrad", "optim.lr=2e-3"], 0.2)
    _job_dir(root, ["method=sago", "optim.lr=1e-3"], 0.3)
    df = frame(load_runs(root))
    assert sorted(zip(df["method"], df["combiner"], strict=True)) == [("simnpo+nll", "pcgrad")] * 2 + [
        ("simnpo+nll", "sago")
    ]
    assert "preset" not in df  # one preset per label: nothing to tell apart
    made = report(root, tmp_path / "out", along="optim.lr")
    assert sorted(made["curves"]["toy"]) == ["simnpo+nll+pcgrad", "simnpo+nll+sago"]
    assert (
        series_name(("simnpo+nll", "pcgrad", "npo"), ["method", "combiner", "preset"])
        == "simnpo+nll+pcgrad (preset=npo)"
    )


def test_the_cli_files_a_run_and_a_sweep_job_under_pcgrad(tmp_path):
    """End to end, without training: a bad learning rate stops each job at validation, after Hydra
    has made its folder and written its record."""
    proc = run_cli(["method=sago", "combiner=pcgrad", "optim.lr=-1"], cwd=tmp_path, cache=tmp_path / "cache")
    assert proc.returncode == 2, proc.stderr[-2000:]
    runs = [p.name for p in (tmp_path / "outputs").glob("*/*")]
    assert len(runs) == 1 and runs[0].endswith("_simnpo+nll+pcgrad_toy"), runs
    proc = run_cli(
        ["-m", "method=sago", "combiner=pcgrad", "optim.lr=-1", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
        cache=tmp_path / "cache",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()] == ["0_simnpo+nll+pcgrad_optim.lr=-1"]
    df = frame(load_runs(tmp_path / "sweep"))
    assert df[["method", "combiner", "status"]].values.tolist() == [["simnpo+nll", "pcgrad", "failed"]]
