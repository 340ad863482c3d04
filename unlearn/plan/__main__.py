"""``python -m unlearn.plan [overrides]``: the memory plan of a run, per GPU, before loading anything.

Takes the same Hydra config and overrides as ``python -m unlearn`` (``experiment=sago_wmdp/bio_rmu``),
plus ``--gpus N`` (``plan.gpus=N``) and ``--sharded`` (``plan.sharded=true``). With
``plan.gpu_memory_gb=80`` it also says whether the run fits and, if not, what would.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from unlearn.config import ConfigError
from unlearn.hydra_setup import conf_dir
from unlearn.plan.budget import GiB, make_plan
from unlearn.plan.check import alternatives, budget, describe, options


def _flags(argv: list[str]) -> list[str]:
    """``--gpus N`` / ``--gpus=N`` / ``--sharded`` as Hydra overrides."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--gpus" and i + 1 < len(argv):
            out.append(f"plan.gpus={argv[i + 1]}")
            i += 2
            continue
        if a.startswith("--gpus="):
            out.append(f"plan.gpus={a.split('=', 1)[1]}")
        elif a == "--sharded":
            out.append("plan.sharded=true")
        else:
            out.append(a)
        i += 1
    return out


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def app(cfg: DictConfig) -> None:
    import torch

    try:
        opt = options(cfg)
        plan = make_plan(cfg, opt)
        print(describe(plan))
        limits = budget(cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        if limits is not None:
            total, usable = limits
            fits = plan.total <= usable
            print(
                f"on a {total / GiB:.0f} GiB GPU ({usable / GiB:.1f} GiB usable): {'fits' if fits else 'does NOT fit'}"
            )
            if not fits:
                print("options that would make it fit:\n" + "\n".join(alternatives(cfg, usable, opt)))
    except ConfigError as e:
        print(f"{e.kind}: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    sys.argv = [
        sys.argv[0],
        *_flags(sys.argv[1:]),
        "hydra.run.dir=.",
        "hydra.output_subdir=null",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]
    app()


if __name__ == "__main__":
    main()
