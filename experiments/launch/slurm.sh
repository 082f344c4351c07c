#!/bin/bash
# DDP on SLURM: one task per GPU, started by srun; Lightning's SLURMEnvironment reads the ranks and the master
# address from SLURM's variables (no torchrun). Edit the header for your cluster, then
#   sbatch experiments/launch/slurm.sh RECIPE.yaml [more CLI arguments]
# The global batch is data.batch_size × nodes × GPUs per node.
# Every start passes --ckpt_path last: a requeued job resumes its run from the newest last.ckpt into the same run
# folder; the first start finds none and trains from scratch (both say so in the log).
#SBATCH --job-name=deeplab
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4        # = --gpus-per-node: one process per GPU
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8          # data loader workers of each process (data.num_workers)
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@90        # Lightning checkpoints and requeues the job 90 s before the time limit
#SBATCH --output=slurm-%j.out
set -euo pipefail

RECIPE=${1:?usage: sbatch experiments/launch/slurm.sh RECIPE.yaml [more CLI arguments]}
shift

# Since Slurm 22.05 srun does not pass --cpus-per-task on to the tasks; --kill-on-bad-exit ends every task when one
# fails, where the others would wait in NCCL until its timeout.
srun --cpus-per-task="$SLURM_CPUS_PER_TASK" --kill-on-bad-exit=1 \
    python -m deeplab_lit fit --config "$RECIPE" --config experiments/configs/_base/trainer_ddp4.yaml \
    --trainer.num_nodes "$SLURM_NNODES" --trainer.devices "$SLURM_NTASKS_PER_NODE" \
    --ckpt_path last "$@"
