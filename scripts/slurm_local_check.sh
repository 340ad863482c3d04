#!/usr/bin/env bash
# srun for real, without a cluster: a one-node SLURM (Debian's slurm-wlm, as root) runs
# scripts/slurm_fsdp.sbatch with 2 CPU tasks, and the result is compared with the same job spawned
# in-process (trainer=fsdp, 2 processes): one run directory, one metrics row per step, and the
# same weights. Usage: sudo bash scripts/slurm_local_check.sh [WORKDIR]   (after install.sh)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/unlearn-slurm-check}"
export PATH="$repo/.venv/bin:$PATH" PYTHONPATH="$repo" WANDB_MODE=offline UNLEARN_CACHE="$work/cache"
args=(experiment=smoke train.batch_size=4 train.steps=6 save_model=true)

if ! command -v slurmctld >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm >/dev/null
fi
if ! sinfo >/dev/null 2>&1; then
  host="$(hostname)"
  mkdir -p /var/spool/slurmd /var/spool/slurmctld /var/log/slurm /run/munge
  cat >/etc/slurm/slurm.conf <<EOF
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MpiDefault=none
NodeName=$host CPUs=$(nproc) RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  [ -f /etc/munge/munge.key ] || mungekey -c
  chown munge:munge /run/munge /etc/munge/munge.key
  su -s /bin/sh munge -c /usr/sbin/munged
  slurmctld
  slurmd
  sleep 3
fi

rm -rf "$work/srun" "$work/spawn" && mkdir -p "$work/srun" "$work/spawn"
# the sbatch script asks for 8 GPUs per node; here 2 CPU tasks
(cd "$work/srun" && sbatch --wait --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 -o slurm.out \
  "$repo/scripts/slurm_fsdp.sbatch" "${args[@]}")
(cd "$work/spawn" && python -m unlearn trainer=fsdp "${args[@]}" hydra.run.dir=run >log 2>&1)
python - "$work" <<'EOF'
import json, sys
from pathlib import Path
from safetensors.torch import load_file

work = Path(sys.argv[1])
runs = sorted((work / "srun" / "outputs").iterdir())
assert len(runs) == 1, f"srun: expected one run directory, got {runs}"
srun, spawn = runs[0], work / "spawn" / "run"
rows = [r for r in map(json.loads, (srun / "metrics.jsonl").read_text().splitlines()) if r.get("phase") == "unlearn"]
a, b = (json.loads((d / "results.json").read_text()) for d in (srun, spawn))
assert a["status"] == "ok" and a["train/steps_done"] == 6 and len(rows) == 6, (a["status"], len(rows))
differ = {k for k in a if not k.startswith("time/") and isinstance(a[k], float) and abs(a[k] - b[k]) > 1e-6}
wa, wb = (load_file(str(d / "model" / "model.safetensors")) for d in (srun, spawn))
worst = max((wa[n] - wb[n]).abs().max().item() for n in wa)
print(f"srun, 2 tasks: {srun.name}, status {a['status']}, {len(rows)} metrics rows (rank 0 alone logs)")
print(f"against the in-job 2-process spawn: {len(differ)} results differ by > 1e-6, max |weight diff| {worst:.1e}")
assert not differ and worst <= 1e-6
EOF
