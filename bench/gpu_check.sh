#!/usr/bin/env bash
# A short check of the CUDA paths, for a machine with a GPU: bf16 and fp16 autocast,
# torch.compile, a 1-process torchrun on NCCL, FSDP over one GPU, and the MFU figure.
# Each item is a tiny real run (a few steps of model=gpt_tiny on tinyshakespeare or
# model=lstm on news); it prints PASS / FAIL / SKIP per item and exits 1 if any failed.
# Without CUDA the GPU items are skipped and the CPU items (the same paths on gloo) still
# run, so the script itself is checked anywhere. Whole script: under 5 minutes.
#
#   bash bench/gpu_check.sh                 # from the repository root, after `make install`
#   BIGMODEL_DATA_DIR=/data bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TORCHRUN=${TORCHRUN:-torchrun}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FAILED=0
LM="model=gpt_tiny data=tinyshakespeare trainer=debug trainer.max_steps=6 trainer.eval_every_steps=3"
CLS="model=lstm data=news model.embedding_dim=16 model.hidden_size=16 trainer=debug trainer.max_steps=6"

if $PYTHON -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    CUDA=1
    $PYTHON -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
else
    CUDA=0
    $PYTHON -c "import torch; print('device: no CUDA (GPU items are skipped) | torch', torch.__version__)"
fi

# item NAME NEEDS_CUDA CHECK COMMAND...: run COMMAND in a fresh folder; PASS when it exits 0
# and the Python expression CHECK holds for the run's metrics.json (`m`); SKIP without CUDA.
item() {
    local name=$1 needs_cuda=$2 check=$3
    shift 3
    if [ "$needs_cuda" = 1 ] && [ "$CUDA" = 0 ]; then
        printf 'SKIP  %-40s no CUDA\n' "$name"
        return
    fi
    local dir="$WORK/$name" start=$SECONDS
    mkdir -p "$dir"
    if (cd "$dir" && timeout 240 "$@" >out.txt 2>err.txt) &&
        (cd "$dir" && $PYTHON - "$check" <<'EOF'
import json, math, sys
from pathlib import Path
runs = sorted(Path("outputs").glob("*/*/*/metrics.json"))
m = json.loads(runs[-1].read_text())
finite = all(math.isfinite(v) for v in m.get("train", {}).values() if isinstance(v, float))
sys.exit(0 if finite and eval(sys.argv[1], {"m": m}) else 1)
EOF
        ); then
        printf 'PASS  %-40s %3d s\n' "$name" $((SECONDS - start))
    else
        printf 'FAIL  %-40s %3d s (see below)\n' "$name" $((SECONDS - start))
        tail -n 15 "$dir/err.txt" | sed 's/^/      /'
        FAILED=1
    fi
}

BM="$PYTHON -m bigmodel_cli"
# CPU: the same code paths on gloo, so that a broken script shows up without a GPU.
item cpu-fp32-finetune 0 "m['steps'] == 6" $BM finetune $CLS device=cpu
item cpu-torchrun-1-process 0 "m['world_size'] == 1" \
    $TORCHRUN --standalone --nproc_per_node=1 -m bigmodel_cli finetune $CLS device=cpu
item cpu-fsdp-1-process 0 "m['world_size'] == 1" \
    $TORCHRUN --standalone --nproc_per_node=1 -m bigmodel_cli pretrain $LM device=cpu trainer.strategy=fsdp
# CUDA
item cuda-bf16-autocast 1 "m['steps'] == 6" $BM pretrain $LM device=cuda device.precision=bf16
item cuda-fp16-grad-scaler 1 "m['steps'] == 6" $BM pretrain $LM device=cuda device.precision=fp16
item cuda-compile 1 "m['steps'] == 6" $BM pretrain $LM device=cuda device.compile=true
item cuda-torchrun-nccl 1 "m['world_size'] == 1" \
    $TORCHRUN --standalone --nproc_per_node=1 -m bigmodel_cli finetune $CLS device=cuda
item cuda-fsdp-nccl-bf16 1 "m['world_size'] == 1" \
    $TORCHRUN --standalone --nproc_per_node=1 -m bigmodel_cli pretrain $LM device=cuda \
    device.precision=bf16 trainer.strategy=fsdp
item cuda-mfu-reported 1 "m.get('mfu') is not None" \
    $BM pretrain $LM device=cuda device.precision=bf16

if [ "$FAILED" = 0 ]; then echo "gpu check: all items passed or were skipped"; else echo "gpu check: FAILED"; fi
exit $FAILED
