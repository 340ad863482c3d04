"""The typed sections of the config: ``train``, ``optim``, ``trainer`` and ``benchmark.finetune``.

Each dataclass is the schema of its section (registered with Hydra's ConfigStore by
:mod:`unlearn.hydra_setup`), so OmegaConf refuses a wrong type (``train.steps=2.5``) or a key the
section does not have while the config is composed. Its defaults are the defaults: ``conf/`` sets
only what a preset changes. What a type cannot say (a range, finiteness, allowed strings) is the
field's :class:`~unlearn.rules.Rule`, stated here once and checked by the validation pass
(:mod:`unlearn.validation`) and by direct construction in Python.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

from unlearn.rules import SEED, Rule, choice, integer, is_number, num, refuse_invalid, setting

SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "bf16", "16-true", "64-true", "64", "transformer-engine")

# rules shared by two sections (the optimizer's and the fine-tuning recipe's), each stated once
LR = num(0, lo_open=True)
WEIGHT_DECAY = num(0)
SCHEDULE = choice(*SCHEDULES)
WARMUP_RATIO = num(0, 1, hi_open=True)
RETAIN_EMA = Rule(lambda v: v is None or (is_number(v) and 0 <= v < 1), "a decay in [0, 1) or null")


def _betas_ok(v: Any) -> bool:
    return len(v) == 2 and all(0 <= float(b) < 1 for b in v)


# Optional[...] rather than `X | None`: OmegaConf reads these annotations at runtime on Python 3.9+
@dataclass
class TrainConfig:
    """``train``: how long to unlearn and how one optimizer step is taken."""

    steps: int = setting(30, integer(1, what="optimizer steps"))
    #: passes over the forget set; when set, replaces steps (papers that give epochs)
    epochs: Optional[float] = setting(
        None, num(0, lo_open=True, null=True, what="passes over the forget set; replaces train.steps")
    )
    batch_size: int = setting(8, integer(1))  # forget samples per micro-batch (each with one retain partner)
    accumulate: int = setting(1, integer(1))  # micro-batches per optimizer step
    #: combine each tensor during the forget backward (one gradient buffer); null = when possible, false = never
    stream: Optional[bool] = None
    clip_norm: Optional[float] = setting(
        1.0, num(0, lo_open=True, null=True, what="global norm of the combined update")
    )
    max_length: int = setting(256, integer(1, what="tokens"))  # tokens per row
    #: EMA decay of g_r used by the combiner's conflict test; null = raw g_r
    retain_ema: Optional[float] = setting(None, RETAIN_EMA)
    diagnostics: bool = (
        True  # log norms, cosines and conflict fractions on every logged step (trainer.log_every_n_steps)
    )
    #: a loss or update norm beyond this (or non-finite) marks the run diverged
    max_abs_loss: float = setting(1.0e4, num(0, lo_open=True, inf_ok=True, what=".inf disables the limit"))
    checkpoint_every: int = setting(
        50, integer(0, what="optimizer steps; 0 = none")
    )  # between checkpoints, for resuming
    keep_checkpoint: bool = False  # keep checkpoints/ after a successful run
    callbacks: list[Any] = setting(factory=list)  # extra Lightning callbacks, each a {_target_: ...}

    def __post_init__(self) -> None:
        refuse_invalid(self, "train")


@dataclass
class OptimConfig:
    """``optim``: AdamW with a warm-up and a ``constant``, ``linear`` or ``cosine`` decay to 0."""

    lr: float = setting(1.0e-3, LR)  # method presets set their own
    weight_decay: float = setting(0.0, WEIGHT_DECAY)
    betas: list[float] = setting(rule=None, factory=lambda: [0.9, 0.999])
    schedule: str = setting("linear", SCHEDULE)
    warmup_ratio: float = setting(0.1, WARMUP_RATIO)  # the first fraction of the steps ramps the rate up from 0

    def __post_init__(self) -> None:
        refuse_invalid(self, "optim")
        if not _betas_ok(self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)!r}")
        self.betas = [float(b) for b in self.betas]


@dataclass
class FinetuneConfig:
    """``benchmark.finetune``: the recipe that makes a benchmark's target and oracle models.

    Checked only where it is used (a job that fine-tunes nothing may leave it unfit); the
    optimizer's fields share their rules with ``optim``.
    """

    lr: float = setting(1.0e-5, LR)
    weight_decay: float = setting(0.0, WEIGHT_DECAY)
    schedule: str = setting("cosine", SCHEDULE)
    warmup_ratio: float = setting(0.05, WARMUP_RATIO)
    batch_size: int = setting(16, integer(1))
    epochs: float = setting(5.0, num(0, lo_open=True))
    max_length: Optional[int] = setting(None, integer(1, null=True, what="tokens; null: train.max_length"))
    seed: int = setting(0, SEED)

    def optim(self) -> OptimConfig:
        return OptimConfig(
            lr=self.lr, weight_decay=self.weight_decay, schedule=self.schedule, warmup_ratio=self.warmup_ratio
        )


@dataclass
class LoopConfig:
    """``trainer``: the Lightning Trainer settings a user may change (manual optimisation fixes the rest).

    ``strategy`` is a Lightning strategy name, or a mapping with a ``_target_`` (built afresh for
    each Trainer, as a strategy object belongs to one). More than one process needs a data-parallel
    ``_target_`` strategy such as ``unlearn.training.ddp.TaskDDPStrategy`` (``trainer=ddp``): the
    step all-reduces each task's gradient itself, and the training stream is sized by
    :attr:`world_size`.
    """

    accelerator: str = setting("auto", choice("auto", "cpu", "gpu", "cuda", "mps", "tpu"))
    devices: Any = 1  # an integer > 0, a list of device indices, or "auto" (checked in __post_init__)
    strategy: Any = "auto"  # a Lightning strategy name or a {_target_: ...} node
    precision: str = setting(
        "32-true", choice(*PRECISIONS, "16-mixed", "16")
    )  # 16-mixed: refused in __post_init__, saying why
    num_workers: int = setting(0, integer(0))
    log_every_n_steps: int = setting(
        1, integer(1)
    )  # metrics, and the gradient diagnostics (several passes over every gradient), every N steps
    enable_progress_bar: bool = True
    progress_every: int = setting(
        10, integer(1, what="optimizer steps between progress lines when stdout is not a terminal")
    )
    threads: Optional[int] = setting(None, integer(1, null=True, what="torch threads; null = torch's choice"))
    extra: dict[str, Any] = setting(factory=dict)  # further lightning.Trainer arguments

    def __post_init__(self) -> None:
        refuse_invalid(self, "trainer")
        if self.precision in ("16-mixed", "16", 16):
            raise ValueError(
                "trainer.precision=16-mixed is not supported (the manual step does no loss scaling); use bf16-mixed or "
                "32-true"
            )
        if isinstance(self.strategy, Mapping) and "_target_" not in self.strategy:
            raise ValueError(
                f"trainer.strategy must be a Lightning strategy name or have a _target_, got {dict(self.strategy)!r}"
            )
        processes = self._devices() * int(self.extra.get("num_nodes", 1))
        if processes > 1 and not isinstance(self.strategy, Mapping):
            raise ValueError(
                f"trainer.devices={self.devices!r} needs a data-parallel strategy that all-reduces the per-task "
                "gradients before the combiner: use trainer=ddp (strategy._target_: "
                f"unlearn.training.ddp.TaskDDPStrategy), got strategy {self.strategy!r}"
            )

    def live_bar(self) -> bool:
        """Lightning's bar only on a terminal: redirected, it would reach the log only at the end."""
        return self.enable_progress_bar and sys.stdout.isatty()

    def _devices(self) -> int:
        if isinstance(self.devices, int) and not isinstance(self.devices, bool) and self.devices >= 1:
            return self.devices
        if isinstance(self.devices, (list, tuple)) and self.devices:
            return len(self.devices)
        raise ValueError(
            f"trainer.devices must be a positive integer or a list of device indices, got {self.devices!r}"
        )

    @property
    def world_size(self) -> int:
        """Processes that split the training stream (each takes every ``world_size``-th item)."""
        return self._devices() * int(self.extra.get("num_nodes", 1)) if isinstance(self.strategy, Mapping) else 1

    def launched_as(self, launch: Any) -> "LoopConfig":
        """The settings for a job started as ``launch.world`` processes by torchrun or srun: each
        process is one device of the data-parallel strategy (``trainer.devices`` per node)."""
        if not isinstance(self.strategy, Mapping):
            raise ValueError(
                f"trainer.strategy: this job was started as {launch.world} processes (torchrun or srun), which need a "
                f"data-parallel strategy, got {self.strategy!r}: add trainer=ddp or trainer=fsdp (or start one process)"
            )
        return replace(self, devices=launch.local_world, extra={**self.extra, "num_nodes": launch.nodes})

    def single_process(self) -> "LoopConfig":
        """The same settings in one process (for recipes whose result must not depend on the trainer)."""
        return replace(
            self, devices=1, strategy="auto", extra={k: v for k, v in self.extra.items() if k != "num_nodes"}
        )


#: (ConfigStore name, schema, where in the composed config it applies); conf/config.yaml lists them first
SECTIONS: tuple[tuple[str, type, str], ...] = (
    ("train", TrainConfig, "train"),
    ("optim", OptimConfig, "optim"),
    ("trainer", LoopConfig, "trainer"),
    ("finetune", FinetuneConfig, "benchmark.finetune"),
)
