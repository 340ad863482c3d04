"""What a run is called: the forget, retain and combiner options that really ran, under the names a
user types on the command line (``simnpo``, ``nll``, ``pcgrad``; never a class name such as ``SAGO``).

A method preset (``method=sago``) only picks options and tunes them; the command line may replace
any of them (``method=sago combiner=pcgrad`` runs PCGrad), so names are built from Hydra's choices
(``hydra.runtime.choices``), not from ``method.name``. The scheme, in one place:

- **label** ``{forget}+{retain}+{combiner}``: always three parts, ``none`` included, so each part is
  known by its place (``rmu`` is both a forget and a retain option). ``method=sago`` →
  ``simnpo+nll+sago``; ``method=sago combiner=pcgrad`` → ``simnpo+nll+pcgrad``; ``method=ga`` →
  ``ga+none+sum``.
- **single run folder** ``outputs/DATE/TIME_{label}_{benchmark}``
  (``outputs/2026-01-02/10-11-12_simnpo+nll+pcgrad_toy``).
- **sweep job folder** ``multirun/SWEEP/{num}_{label}[_{other overrides}]``
  (``0_simnpo+nll+pcgrad_seed=1,smoothing.rate=0.5``): the ``method=``, ``forget=``, ``retain=``
  and ``combiner=`` overrides are left out, the label says what they chose; the rest is
  :func:`unlearn.sweepnames.job_dirname`'s (cut and hashed past 120 characters).
- **W&B name** ``{label}-{benchmark}[ {other overrides}]`` (``simnpo+nll+pcgrad-toy seed=1``; a
  ``benchmark=`` override is in the name already) and **tags** ``method:{forget}+{retain}``,
  ``combiner:``, ``forget:``, ``retain:``, ``preset:{method.name}``, ``benchmark:``, ``model:``.
  ``preset:`` keeps the method preset findable: it chose the hyperparameters (``lr``, SimNPO's
  ``beta``), not the options.
- **report** factors ``method`` = ``{forget}+{retain}`` and ``combiner``; a series is named
  ``{method}+{combiner}``, the label again (:mod:`unlearn.report.collect`).
"""

from __future__ import annotations

from typing import Any, Mapping

from unlearn.sweepnames import item_key, job_dirname, safe_name, split_items

#: the config groups whose options make up a label, in label order
GROUPS = ("forget", "retain", "combiner")
#: overrides a label makes redundant in a name (the preset's choices are in the label)
LABEL_KEYS = ("method", *GROUPS)


def method_label(forget: Any, retain: Any) -> str:
    """The loss pair: ``simnpo+nll``, ``ga+none``."""
    return f"{safe_name(forget, limit=60)}+{safe_name(retain, limit=60)}"


def run_label(forget: Any, retain: Any, combiner: Any) -> str:
    """``{forget}+{retain}+{combiner}`` (``simnpo+nll+pcgrad``), each part folder-safe."""
    return f"{method_label(forget, retain)}+{safe_name(combiner, limit=60)}"


def label_of(choices: Mapping[str, Any]) -> str:
    """The label of a job from Hydra's ``runtime.choices`` (``?`` for a group that was not chosen)."""
    return run_label(*(choices.get(g) or "?" for g in GROUPS))


def other_overrides(overrides: str, drop: tuple[str, ...] = LABEL_KEYS) -> str:
    """``hydra.job.override_dirname`` without the overrides of ``drop``
    (``combiner=pcgrad,method=sago,seed=1`` → ``seed=1``)."""
    return ",".join(i for i in split_items(overrides) if item_key(i) not in drop)


def job_folder(label: str, overrides: str) -> str:
    """A sweep job's folder below ``{num}_``: ``{label}`` or ``{label}_{other overrides}``."""
    rest = other_overrides(overrides)
    return f"{label}_{job_dirname(rest)}" if rest else label


def wandb_name(choices: Mapping[str, Any], benchmark: str, overrides: str) -> str:
    """``simnpo+nll+pcgrad-toy``, then the job's other overrides after a space, if any."""
    rest = other_overrides(overrides, (*LABEL_KEYS, "benchmark"))
    return f"{label_of(choices)}-{benchmark}" + (f" {rest}" if rest else "")


def wandb_tags(choices: Mapping[str, Any], preset: Any, benchmark: str, model: str) -> list[str]:
    """The W&B tags of a job (see the module docstring)."""
    f, r, c = (choices.get(g) or "?" for g in GROUPS)
    return [
        f"method:{method_label(f, r)}",
        f"combiner:{c}",
        f"forget:{f}",
        f"retain:{r}",
        f"preset:{preset}",
        f"benchmark:{benchmark}",
        f"model:{model}",
    ]


def register_resolvers() -> None:
    """``${run_label:F,R,C}`` and ``${job_folder:LABEL,OVERRIDES}`` for ``hydra.run.dir`` and
    ``hydra.sweep.subdir`` (conf/config.yaml)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_label"):
        OmegaConf.register_new_resolver("run_label", run_label)
    if not OmegaConf.has_resolver("job_folder"):
        OmegaConf.register_new_resolver("job_folder", job_folder)


register_resolvers()  # the folder names are resolved wherever conf/ is composed with this module imported
