#!/bin/bash
# DDP with torchrun: run this on every node (same MASTER); Lightning's TorchElasticEnvironment reads the ranks
# torchrun sets. The c10d rendezvous needs no node rank.
#   MASTER=node0 NNODES=2 GPUS=4 experiments/launch/torchrun.sh RECIPE.yaml [more CLI arguments]
# The global batch is data.batch_size × NNODES × GPUS.
set -euo pipefail

RECIPE=${1:?usage: [MASTER=host] [NNODES=n] [GPUS=g] experiments/launch/torchrun.sh RECIPE.yaml [more CLI arguments]}
shift
NNODES=${NNODES:-1}
if [[ -z "${GPUS:-}" ]]; then  # the GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else all of them
    if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
        GPUS=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c '[^[:space:]]' || true)
    else
        GPUS=$(nvidia-smi --list-gpus | wc -l)
    fi
fi
if (( GPUS < 1 )); then
    echo "no GPU visible (CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES:-}'); set GPUS or CUDA_VISIBLE_DEVICES" >&2
    exit 1
fi
MASTER=${MASTER:-localhost}

torchrun --nnodes "$NNODES" --nproc-per-node "$GPUS" \
    --rdzv-backend c10d --rdzv-endpoint "$MASTER:${MASTER_PORT:-29500}" --rdzv-id "${RDZV_ID:-deeplab}" \
    -m deeplab_lit fit --config "$RECIPE" --config experiments/configs/_base/trainer_ddp4.yaml \
    --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS" "$@"
