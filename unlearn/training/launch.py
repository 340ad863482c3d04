"""Jobs started as several processes by ``torchrun`` or ``srun`` (the ecosystem's launchers).

``torchrun --nproc-per-node=N -m unlearn trainer=ddp ...`` (or ``srun`` inside an sbatch script,
``launcher=slurm`` with ``tasks_per_node``) starts the whole job N times. Then:

- the process group is made at the start of the job, from the launcher's environment (Lightning's
  own cluster environments read it), so the ranks can agree before anything is computed;
- rank 0 owns the run directory: its path (Hydra's, which may differ by a second between ranks)
  and the checkpoint to resume from are broadcast to the others, which write nothing there;
- rank 0 alone evaluates (target, oracle, unlearned model), logs to the metrics file and W&B and
  saves the model; every rank builds the same data and model (the fine-tuned target comes from the
  shared cache, built once under its lock) and takes part in training, each process on its own
  device, and then the other ranks are done. No weights are handed between processes (under FSDP
  rank 0 gathers the trained shards once).

One process started by a launcher (``--nproc-per-node=1``) is an ordinary job.
"""

from __future__ import annotations

import datetime
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: How long a rank waits for the others at a collective: rank 0 evaluates the target and the
#: oracle (minutes to hours on paper-scale benchmarks) while the others wait to start training.
TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Launch:
    rank: int
    world: int
    local_rank: int
    local_world: int

    @property
    def nodes(self) -> int:
        return max(1, self.world // self.local_world)


def _environment() -> Any:
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return SLURMEnvironment()
    return None


def launched() -> Launch | None:
    """The launcher's processes when this job is one of several (``None``: an ordinary job)."""
    env = _environment()
    if env is None or env.world_size() <= 1:
        return None
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or _slurm_tasks_per_node() or env.world_size())
    return Launch(rank=env.global_rank(), world=env.world_size(), local_rank=env.local_rank(), local_world=local_world)


def _slurm_tasks_per_node() -> int | None:
    value = os.environ.get("SLURM_NTASKS_PER_NODE")  # "4" or "4(x2)"
    return int(value.split("(")[0]) if value else None


def init(launch: Launch) -> None:
    """The job's process group (gloo on CPU, nccl on GPU), made once from the launcher's environment;
    Lightning's strategies then use it as it is."""
    if dist.is_initialized():
        return
    env = _environment()
    os.environ.setdefault("MASTER_ADDR", env.main_address)
    os.environ.setdefault("MASTER_PORT", str(env.main_port))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(launch.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=launch.rank, world_size=launch.world, timeout=TIMEOUT)


def from_rank0(value: T) -> T:
    """Rank 0's ``value`` on every rank (the value itself in an ordinary job)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def drop_stray_dir(own: Path, rank0: Path) -> None:
    """A non-zero rank's own Hydra output folder, when it is not rank 0's and holds only Hydra's
    files (its clock gave another timestamp): removed, so the job leaves one run directory."""
    if own.resolve() == rank0.resolve() or not own.is_dir():
        return
    if all(p.name == ".hydra" or p.suffix == ".log" for p in own.iterdir()):
        shutil.rmtree(own, ignore_errors=True)
