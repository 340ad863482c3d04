"""Sharded data parallelism for the two-task step: FSDP2 (``fully_shard``) under Lightning.

Why FSDP2 inside our own strategy, rather than Lightning's ``FSDPStrategy`` (FSDP1) or its
``ModelParallelStrategy``: FSDP1 flattens each wrapped module's parameters into one ``FlatParameter``,
so the per-tensor rules (PCGrad per tensor, ``select`` by name) would see flat slices spanning
several tensors; FSDP2 keeps every parameter a ``DTensor`` sharded on its first dimension, so
tensor ``j``'s local shard is a slice of tensor ``j``. ``ModelParallelStrategy`` applies FSDP2 but
only launches by re-running the script (no in-job spawn) and expects the parallelism in the
module's ``configure_model``; :class:`TaskFSDPStrategy` is :class:`~unlearn.training.ddp.
TaskDDPStrategy` (same launching, same process group, same in-order data split) with the model
sharded where DDP would wrap it.

What the engine does for us: each task's ``loss.backward()`` all-gathers the weights layer by
layer and reduce-scatters (averages) each gradient over the ranks, then fires the parameters'
post-accumulate hooks with the rank's shard, which is where :class:`~unlearn.training.gradients.
TaskGradients` takes it. The combiner runs on local shards; the per-tensor sums a rule needs are
added over the ranks in one small collective (see :mod:`unlearn.training.gradients`). Optimizer
state lives on the shards. Checkpoints and the weights handed back to the job hold full (gathered)
tensors, so they load into a single-process model, and a resumed sharded run reshards them.
"""

from __future__ import annotations

from typing import Any, Mapping

from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from unlearn.training.ddp import TaskDDPStrategy
from unlearn.training.gradients import shard_of

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def block_classes(model: nn.Module) -> set[str]:
    """The class names of a transformers model's repeated blocks (``_no_split_modules``: the
    decoder layers), each of which becomes one FSDP unit; found through PEFT wrappers too."""
    for m in model.modules():
        names = getattr(m, "_no_split_modules", None)
        if names:
            return set(names)
    return set()


def shard(model: nn.Module, world: int) -> int:
    """``fully_shard`` each block of ``model`` and then its root, over ``world`` ranks; returns the
    number of FSDP units. Every rank must already hold the same weights."""
    device = next(model.parameters()).device.type
    mesh = init_device_mesh(device, (world,))
    blocks = block_classes(model)
    units = 0
    for m in model.modules():
        if type(m).__name__ in blocks:
            fully_shard(m, mesh=mesh)
            units += 1
    fully_shard(model, mesh=mesh)
    return units + 1


class _FullStateLauncher(_MultiProcessingLauncher):
    """Hands the trained weights back as full tensors: every rank joins the gather, rank 0 keeps
    them (Lightning's launcher would send rank 0's shards)."""

    def _collect_rank_zero_results(self, trainer: Any, results: Any) -> Any:
        module = trainer.lightning_module
        full = get_model_state_dict(module, options=FULL)
        module.state_dict = lambda *a, **k: full  # what the base launcher saves, on this rank only
        try:
            return super()._collect_rank_zero_results(trainer, results)
        finally:
            del module.state_dict


class TaskFSDPStrategy(TaskDDPStrategy):
    """:class:`TaskDDPStrategy` whose module's model is sharded with FSDP2 instead of replicated.

    Accepts ``DDPStrategy``'s launching arguments (``start_method``, ``process_group_backend``).
    """

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _MultiProcessingLauncher):
            self._launcher = _FullStateLauncher(self, start_method=self._start_method)  # type: ignore[arg-type]  # popen never reaches here

    def _task_module(self) -> Any:
        """The :class:`~unlearn.training.module.UnlearnModule` being trained (typed ``Any``: its
        model, gradients and EMA are read and replaced here)."""
        module = self.lightning_module
        assert module is not None, "the strategy has no module attached"
        return module

    def configure_ddp(self) -> None:
        assert self.model is not None
        _sync_module_states(self.model)  # rank 0's weights everywhere, then each rank keeps its shard
        module = self._task_module()
        self.fsdp_units = shard(module.model, self.world_size)
        # The task gradients hold the sharded parameters, taken now: inside a forward pass the
        # root unit's parameters are swapped for their unsharded (unreduced) versions.
        module._grads = None
        assert module.grads.sharded
        ema = module._ema.value if module._ema is not None else None
        if ema is not None:  # restored from a checkpoint as whole tensors: keep this rank's shards
            module._ema.value = [shard_of(v, p) for v, p in zip(ema, module.grads.params, strict=True)]

    def teardown(self) -> None:
        """Launched by torchrun/srun the trained model stays in this process, sharded: rank 0
        gathers the whole weights (every rank takes part) for the job to evaluate and save."""
        module: Any = self.lightning_module
        env = self.cluster_environment
        if (
            module is not None
            and env is not None
            and env.creates_processes_externally
            and module._grads is not None
            and module._grads.sharded
        ):
            full = get_model_state_dict(module.model, options=FULL)
            module.gathered = full if self.global_rank == 0 else None
        super().teardown()

    # -- checkpoints hold full tensors (collectives: every rank takes part) ---------------------
    def lightning_module_state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self._task_module(), options=FULL)

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        opt = getattr(optimizer, "_optimizer", optimizer)
        return get_optimizer_state_dict(self._task_module(), opt, options=FULL)

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        for opt, state in zip(self.optimizers, checkpoint["optimizer_states"], strict=True):
            set_optimizer_state_dict(self._task_module(), opt, state, options=StateDictOptions(full_state_dict=True))


def is_sharded(strategy: Any) -> bool:
    """Whether a ``trainer.strategy`` (a name or a ``{_target_: ...}`` mapping) shards the model."""
    if not isinstance(strategy, Mapping) or "_target_" not in strategy:
        return False
    from hydra.utils import get_class

    try:
        cls = get_class(str(strategy["_target_"]))
    except Exception:  # an unknown target: the validation pass names it
        return False
    return isinstance(cls, type) and issubclass(cls, TaskFSDPStrategy)


def check_sharded(combiner: Any, objective: Any, lora: bool, smoothing_rate: Any) -> list[str]:
    """What ``trainer=fsdp`` cannot honour, each with its key and the alternative (empty: fine)."""
    out = []
    if combiner is not None and not combiner.per_tensor:
        out.append(
            "combiner: trainer=fsdp runs the combiner on each rank's shards, tensor by tensor, but "
            f"{type(combiner).__name__} implements _combine on whole lists: write its rule per tensor "
            "(_sums/_tensor/_finish, see unlearn/combiners/base.py) or use trainer=ddp"
        )
    for c in objective.components() if objective is not None else ():
        if getattr(c, "runs_reference", False) and not lora:
            out.append(
                f"{type(c).__name__} runs the frozen starting model during training, which trainer=fsdp cannot swap "
                "into the sharded model: set model.lora (the reference is then the base with the adapter off) or use "
                "trainer=ddp"
            )
    if smoothing_rate == "auto":
        out.append(
            "smoothing.rate=auto estimates r* with torch.autograd.grad over the whole model, which FSDP does not "
            "reduce: set smoothing.rate to a number or use trainer=ddp"
        )
    return out
