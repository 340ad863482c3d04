"""Data parallelism for the two-task step: Lightning's DDP, without DDP's gradient reducer.

docs/methods.md §1: each rank accumulates ``g_r`` and ``g_f`` in its own buffers, the buffers are averaged
across ranks, and only then is the combiner applied, once. :class:`~unlearn.training.gradients.
TaskGradients` does that averaging itself. PyTorch's ``DistributedDataParallel`` wrapper would
average ``.grad`` after a ``backward()``, i.e. the *combined* update, and a nonlinear combiner of
averages is not the average of per-rank combinations. Our step never calls ``backward()`` (it takes
``torch.autograd.grad`` per task) and Lightning switches DDP's backward sync off in manual
optimisation, so the wrapper would sit idle, yet it still allocates gradient buckets as large as
every trainable parameter. So the model is not wrapped: its weights are broadcast from rank 0 once,
as DDP's constructor would, and the rest (process group, rank-0 logging, launching the processes) is Lightning's
``DDPStrategy`` as is.

The training stream is split by :class:`InOrderSampler`: Lightning would replace a training
loader's sampler by a *shuffling* ``DistributedSampler``, but the stream is already a seeded, pure
function of the item index, and rank ``r`` of ``w`` must take items ``r, r+w, r+2w...`` so that
the ranks' micro-batches together are exactly one process's batches at ``w`` times the size.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import torch.distributed as dist
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import Dataset, DistributedSampler


class TaskDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose module is not wrapped in ``DistributedDataParallel``.

    Accepts ``DDPStrategy``'s arguments (``start_method``, ``process_group_backend``, ``timeout``);
    DDP wrapper options (``find_unused_parameters``, comm hooks) have no effect.
    """

    def _configure_launcher(self) -> None:
        """Spawn the workers from inside the job, unless a launcher (torchrun, srun) already
        started one process per device: then each process trains as it is."""
        assert self.cluster_environment is not None
        if self.cluster_environment.creates_processes_externally:
            self._launcher = None
            return
        super()._configure_launcher()

    def configure_ddp(self) -> None:
        assert self.model is not None
        _sync_module_states(self.model)  # every rank starts from rank 0's weights and buffers


class InOrderSampler(DistributedSampler):
    """``DistributedSampler`` without shuffling whose rank is read when it is iterated.

    The data loader is built before Lightning starts the worker processes, when no process group
    exists yet; each worker iterates its pickled copy and takes items ``rank, rank+world, ...``.

    ``skip`` items of this rank's share are passed over (a resumed run's, done before its
    checkpoint); the length stays the whole share, see :class:`unlearn.training.fit.ResumeSampler`.
    """

    def __init__(self, dataset: Dataset, world: int, skip: int = 0) -> None:
        super().__init__(dataset, num_replicas=world, rank=0, shuffle=False, drop_last=True)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return itertools.islice(super().__iter__(), self.skip, None)
