"""The LightningModule: losses → per-task gradients → combiner → clip → step (spec §1).

Manual optimisation, because the forget and retain gradients must be computed and accumulated
separately and combined once per optimizer step, after any all-reduce.

With one micro-batch per step on one device and a per-tensor combiner (``train.stream``, on by
default there), the forget backward is run last and each tensor's update is formed as soon as its
forget gradient exists (:class:`~unlearn.training.gradients.TensorwiseUpdate`): one gradient
buffer, as in a plain ``(L_f + L_r).backward()``. Otherwise ``g_r`` and ``g_f`` are accumulated
(and all-reduced) in two buffers and combined tensor by tensor, freeing both as ``.grad`` fills.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from unlearn.combiners import Combiner, Sum, gradient_diagnostics
from unlearn.combiners.base import sq_norms
from unlearn.config import ConfigError
from unlearn.distributed import mean_over_ranks, sum_over_ranks, world_size
from unlearn.losses.objective import Objective
from unlearn.schema import TrainConfig
from unlearn.training.gradients import GradientEMA, TaskGradients, TensorwiseUpdate, clip_, full_tensor
from unlearn.training.optim import OptimConfig, build_optimizer


@dataclass
class DivergenceGuard:
    """Stops training when a loss or the update stops being finite or grows past ``max_abs_loss``
    (``train.max_abs_loss``, whose rule is :class:`unlearn.schema.TrainConfig`'s)."""

    max_abs_loss: float = 1e4
    reason: str | None = None
    step: int | None = None

    def __post_init__(self) -> None:
        self.max_abs_loss = float(self.max_abs_loss)

    def check(self, step: int, values: Mapping[str, Tensor]) -> bool:
        for name, v in values.items():
            x = float(v)
            if not math.isfinite(x) or abs(x) > self.max_abs_loss:
                self.reason = f"{name}={x:.4g} at step {step} (limit |x| <= {self.max_abs_loss:g}, finite)"
                self.step = step
                return True
        return False


@dataclass
class StepConfig:
    """How one optimizer step is taken: micro-batches to accumulate, clipping, the EMA of g_r.

    Built from ``train`` (:meth:`from_train`), whose schema (:class:`unlearn.schema.TrainConfig`)
    holds the range of each value; this class adds only the rule that ties two of them together.

    ``stream``: combine during the forget backward (one gradient buffer). ``None`` does so whenever
    it can (one micro-batch, one device, a per-tensor combiner) and buffers otherwise; ``True``
    insists (and refuses a setting that cannot stream); ``False`` always buffers ``g_r`` and ``g_f``.
    """

    accumulate: int = 1
    clip_norm: float | None = 1.0
    retain_ema: float | None = None
    diagnostics: bool = True
    guard: DivergenceGuard = field(default_factory=DivergenceGuard)
    stream: bool | None = None

    def __post_init__(self) -> None:
        if self.stream and self.accumulate > 1:
            raise ValueError(
                "train.stream=true combines each tensor during the backward pass of a step's only micro-batch, but "
                f"train.accumulate={self.accumulate}: set train.stream=null (it then buffers g_r and g_f across "
                "micro-batches) or train.accumulate=1"
            )

    @classmethod
    def from_train(cls, train: TrainConfig) -> "StepConfig":
        return cls(
            accumulate=train.accumulate,
            clip_norm=train.clip_norm,
            retain_ema=train.retain_ema,
            diagnostics=train.diagnostics,
            guard=DivergenceGuard(max_abs_loss=train.max_abs_loss),
            stream=train.stream,
        )


def check_combiner(step: StepConfig, combiner: Combiner) -> None:
    """Refuse ``train.retain_ema`` with a combiner that would not use the EMA, and ``train.stream``
    with one whose rule cannot stream (before training)."""
    if step.stream and not combiner.streams:
        why = (
            "needs scalars over all tensors before any update"
            if combiner.per_tensor
            else "implements _combine on whole lists"
        )
        raise ConfigError(
            f"train.stream=true cannot stream combiner {type(combiner).__name__}, whose rule {why}: set "
            "train.stream=null (it then buffers g_r and g_f) or choose sum, pcgrad or sago"
        )
    if step.retain_ema and not combiner.uses_reference:  # 0 / null: the module keeps no EMA
        raise ConfigError(
            f"train.retain_ema={step.retain_ema!r} has no effect with combiner {type(combiner).__name__}, which takes "
            "no reference gradient: set train.retain_ema=null or choose pcgrad, pcgrad_global or sago"
        )


def check_stream(step: StepConfig, world: int) -> None:
    """Refuse ``train.stream=true`` with more than one process (before training)."""
    if step.stream and world > 1:
        raise ConfigError(
            f"train.stream=true needs one device, but this run has {world} processes, whose gradients are "
            "all-reduced before the combine: set train.stream=null (it then buffers g_r and g_f)"
        )


class UnlearnModule(L.LightningModule):
    """Wraps a causal LM with an :class:`Objective` and a :class:`Combiner`.

    With a single task (retain ``none``, or fine-tuning with no forget task) the combiner is
    bypassed and the update is that task's gradient times its weight (``gamma`` or ``alpha``):
    every combiner reduces to that when the other gradient is zero (spec §4).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        combiner: Combiner | None = None,
        optim: OptimConfig | None = None,
        step: StepConfig | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.combiner = combiner if combiner is not None else Sum()
        self.optim = optim if optim is not None else OptimConfig()
        self.step_cfg = step if step is not None else StepConfig()
        check_combiner(self.step_cfg, self.combiner)
        self.automatic_optimization = False
        self._grads: TaskGradients | None = None
        self._ema = GradientEMA(self.step_cfg.retain_ema) if self.step_cfg.retain_ema else None
        self.diverged = False
        self.steps_done = 0
        self.gathered: dict[str, Tensor] | None = (
            None  # the whole trained weights, when FSDP trained them in this process (torchrun)
        )
        self._losses: dict[str, Tensor] = {}

    # -- setup ---------------------------------------------------------------------------------
    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    @property
    def grads(self) -> TaskGradients:
        if self._grads is None:
            named = self.trainable()
            self._grads = TaskGradients([p for _, p in named], [n for n, _ in named])
        return self._grads

    def configure_optimizers(self) -> Any:
        total = self.trainer.max_steps
        if total is None or total < 0:
            total = int(self.trainer.estimated_stepping_batches) // self.step_cfg.accumulate
        return build_optimizer([p for _, p in self.trainable()], self.optim, total)

    # -- state beyond the weights and the optimizer, for exact resumption -----------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ema = self._ema.value if self._ema is not None else None
        if ema is not None and self.grads.sharded:  # every rank's shards into whole tensors (all ranks take part)
            ema = [full_tensor(v, p) for v, p in zip(ema, self.grads.params, strict=True)]
        checkpoint["unlearn"] = {
            "ema": ema,
            "components": {str(i): c.state_dict() for i, c in enumerate(self.objective.components())},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("unlearn", {})
        if self._ema is not None and state.get("ema") is not None:
            self._ema.value = list(state["ema"])
        for i, c in enumerate(self.objective.components()):
            if str(i) in state.get("components", {}):
                c.load_state_dict(state["components"][str(i)])

    # -- the step ------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        check_stream(self.step_cfg, self.trainer.world_size)

    def streaming(self) -> bool:
        """Whether this step combines during the forget backward (see :class:`StepConfig`)."""
        cfg = self.step_cfg
        can = cfg.accumulate == 1 and world_size() == 1 and self.combiner.streams and len(self.objective.tasks) == 2
        return can and cfg.stream is not False

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        cfg = self.step_cfg
        if batch_idx % cfg.accumulate == 0:
            self.objective.before_step(self.global_step, self.model, batch)  # e.g. SGA's rate: auto
        last = (batch_idx + 1) % cfg.accumulate == 0
        forget_loss = self._accumulate(batch, last)
        if not last:
            return  # more micro-batches to accumulate before this optimizer step

        self.grads.all_reduce()
        self._losses = mean_over_ranks(self._losses)  # so every rank logs and guards the same values
        if self._diverging({}):  # the losses, before any backward of the forget loss when streaming
            return
        stats = self._combine(forget_loss)  # the update, in .grad
        if self._diverging(stats):  # a non-finite update is in .grad but never reaches the optimizer
            return
        self.grads.reset()
        opt = self._optimizer()
        if cfg.clip_norm is not None:  # by the update's norm, which the step has computed already
            clip_(self.grads.params, stats["norm_update"], cfg.clip_norm)
        opt.step()
        self._scheduler().step()
        opt.zero_grad(set_to_none=True)
        self.steps_done += 1
        self._log_step(stats)
        self._losses = {}

    def _accumulate(self, batch: Mapping[str, Any], last: bool) -> Tensor | None:
        """Each task's loss, and its gradient into its buffer (``last``: the step's last
        micro-batch, whose backward starts the all-reduce); when streaming, the forget loss is
        returned with its backward not yet run (the retain task comes first)."""
        scale = 1.0 / self.step_cfg.accumulate
        for task in self.objective.tasks:
            loss = self.objective.loss(task, self.model, batch)
            self._losses[task] = self._losses.get(task, 0.0) + loss.detach() * scale
            if task == "forget" and self.streaming():
                return loss
            self.grads.accumulate(task, loss, scale=scale, last=last)
        return None

    def _combine(self, forget_loss: Tensor | None) -> dict[str, Tensor]:
        """Write the update into ``.grad`` and return the step's statistics."""
        grads, diagnostics = self.grads, self.step_cfg.diagnostics and self._logs_this_step()
        if len(self.objective.tasks) == 1:
            return self._single_task(diagnostics)
        if (
            not self.combiner.per_tensor
        ):  # a whole-list rule: g_r, g_f and the update at once (never sharded: check_sharded)
            g_r, g_f = self._task_grads("retain"), self._task_grads("forget")
            ref = self._ema.update(g_r) if self._ema is not None else None
            result = self.combiner.combine(g_r, g_f, names=grads.names, reference=ref)
            grads.write(result.update)
            stats = dict(result.stats)
            stats.update(
                gradient_diagnostics(g_r, g_f, result.update) if diagnostics else {"norm_update": _norm(result.update)}
            )
            return stats
        run = self.combiner.start(grads.names, len(grads.params))
        if self._ema is not None:
            self.combiner.check_reference()
        if forget_loss is not None:  # streaming: each tensor is combined as the forget backward produces it
            update = TensorwiseUpdate(grads, run, ema=self._ema, diagnostics=diagnostics)
            grads.backward(forget_loss, update, once=True)
            return update.stats()
        g_r, g_f = self._task_grads("retain"), self._task_grads("forget")
        ref = None
        if self.combiner.needs_totals or grads.sharded:  # every tensor's sums before any update (added over the shards)
            ref = self._ema.update(g_r) if self._ema is not None else g_r
            run.prepare(g_r, g_f, ref, reduce=sum_over_ranks if grads.sharded else None)
        update = TensorwiseUpdate(grads, run, ema=self._ema, ref=ref, diagnostics=diagnostics)
        grads.drain("forget", update)  # frees g_r[i] and g_f[i] as .grad[i] is written
        return update.stats()

    def _single_task(self, diagnostics: bool) -> dict[str, Tensor]:
        """Retain ``none`` or fine-tuning: the update is that task's gradient times its weight."""
        task = self.objective.tasks[0]
        only = self._task_grads(task)
        weight = self.combiner.gamma if task == "forget" else self.combiner.alpha
        sharded = self.grads.sharded
        stats = {f"norm_{task}": _norm(only, sharded)} if diagnostics else {}  # the two-task diagnostics' key
        torch._foreach_mul_(only, weight)  # in place: the buffer becomes the update
        stats["norm_update"] = _norm(only, sharded)
        self.grads.write(only)
        return stats

    # Lightning's accessors are typed for several optimizers and schedulers; configure_optimizers
    # returns one of each, and the step's own buffers hold every task of the objective.
    def _optimizer(self) -> LightningOptimizer:
        opt = self.optimizers()
        if isinstance(opt, list):
            raise RuntimeError(f"expected one optimizer, got {len(opt)}")
        return opt

    def _scheduler(self) -> LRScheduler:
        sched = self.lr_schedulers()
        if not isinstance(sched, LRScheduler):
            raise RuntimeError(f"expected one learning-rate scheduler, got {sched!r}")
        return sched

    def _task_grads(self, task: str) -> list[Tensor]:
        g = self.grads.get(task)
        if g is None:
            raise RuntimeError(f"no {task} gradient was accumulated this step")
        return g

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes this step's metrics (``trainer.log_every_n_steps``): the
        diagnostics (several passes over every gradient) are computed on those steps only."""
        try:
            return bool(self.trainer._logger_connector.should_update_logs)
        except (AttributeError, RuntimeError):  # no trainer attached, or a Lightning without it
            return True

    def _log_step(self, stats: Mapping[str, Tensor]) -> None:
        # "step" is the x-axis Lightning hands the loggers (metrics.jsonl, W&B): this optimizer
        # step's index, as a resume truncates the metrics at (its own counter counts micro-batches)
        metrics: dict[str, Tensor | float] = {"step": float(self.steps_done - 1)}
        metrics.update({f"train/loss/{k}": v for k, v in self._losses.items()})
        metrics.update({f"train/grad/{k}": v for k, v in stats.items()})
        metrics["train/lr"] = self._scheduler().get_last_lr()[0]
        for c in self.objective.components():
            metrics.update(c.log_values())
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, batch_size=1)

    def _diverging(self, stats: Mapping[str, Tensor]) -> bool:
        watched = {f"train/loss/{k}": v for k, v in self._losses.items()}
        if "norm_update" in stats:
            watched["train/grad/norm_update"] = stats["norm_update"]
        if not self.step_cfg.guard.check(self.global_step, watched):
            return False
        self.diverged = True
        self.grads.reset()
        self._optimizer().zero_grad(set_to_none=True)
        self.trainer.should_stop = True
        self.print(f"[unlearn] diverged: {self.step_cfg.guard.reason}; training stopped")
        return True

    # -- the outcome travels with the weights: spawned DDP workers hand back only a state dict ----
    def get_extra_state(self) -> dict[str, Any]:
        guard = self.step_cfg.guard
        return {
            "steps_done": self.steps_done,
            "diverged": self.diverged,
            "reason": guard.reason,
            "diverged_at": guard.step,
        }

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        self.steps_done, self.diverged = int(state["steps_done"]), bool(state["diverged"])
        self.step_cfg.guard.reason, self.step_cfg.guard.step = state["reason"], state["diverged_at"]


def _norm(ts: list[Tensor], sharded: bool = False) -> Tensor:
    """Global L2 norm of a list of tensors, accumulated in fp32 one tensor at a time (``sharded``:
    of the whole tensors whose local shards these are)."""
    total = sq_norms(ts).sum()
    if sharded:
        total = sum_over_ranks([{"n2": total}])[0]["n2"]
    return torch.sqrt(total)
