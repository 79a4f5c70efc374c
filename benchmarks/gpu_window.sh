#!/usr/bin/env bash
# The GPU runs of docs/results/gpu_ledger.md as ready commands, so that a device window is spent on training,
# not on typing. What shapes them (the device tool's limits): ../shared does not travel, so CIFAR-10 goes as one
# 19 MiB archive in the ignored folder .gpu/ (the 60,000 JPEGs as files count as over the 64 MiB a call carries),
# carried by the window's first call, unpacked by its step, and kept on the warm machine for the next calls (it
# goes back after 30 s idle); a checkpoint to resume travels in a later call than the data; at most 8 files of
# 16 MiB come back, so weights come back as fp16 safetensors cut into 15 MiB parts (`unpack` joins them).
#
#   bash benchmarks/gpu_window.sh prepare        # here: CIFAR-10 as .gpu/cifar10.tar.gz (carry ".gpu")
#   bash benchmarks/gpu_window.sh regular        # device: VGG-16 + ResNet-18 (issue 18), then their decoupling
#                                                #   benchmark on the device; fp16 weights and JSON to $OUT
#   bash benchmarks/gpu_window.sh fast           # device: issue 17 item 2 (>= 94 % in <= 10 min), alone on the GPU
#   GRID=seed CELLS="relu-150 relu6-150" SEEDS="0 1" bash benchmarks/gpu_window.sh grid
#                                                # device: issue 17 items 1, 3, 4 (cifar_ablation.py cells), each
#                                                #   cell x seed its own process; an unfinished run resumes from
#                                                #   runs/cifar in the next call while the machine is warm
#   bash benchmarks/gpu_window.sh unpack DIR     # here: the returned files of DIR into runs/ and docs/results/
#
# Environment: OUT (where results go; the device tool sets it), DEVICE (cuda), DATA (.gpu/cifar10),
# LIMIT (seconds a step may train, 540), SWEEP_LIMIT (seconds each conversion process of `regular` may take, LIMIT),
# SWEEP (0: `regular` trains the networks and skips the sweep), PYTHON (python3). SMOKE=1 checks a step on the CPU
# in a few minutes (1 epoch on 1,000 images, two decoupling methods at one target): what `pytest` cannot, that the
# commands still fit together.
set -uo pipefail  # no -e: a run cut off by its time limit must not stop the packing of what it wrote
cd "$(dirname "$0")/.."
step=${1:?"usage: $0 prepare|regular|fast|grid|unpack DIR"}
DEVICE=${DEVICE:-cuda} DATA=${DATA:-.gpu/cifar10} LIMIT=${LIMIT:-540} PYTHON=${PYTHON:-python3}
SWEEP_LIMIT=${SWEEP_LIMIT:-$LIMIT}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
gpu=(--device "$DEVICE" --precision bf16 --channels-last --data-on-device)
epochs=40 small=() targets=2,3,4 finetune=1 methods=refine,channel+decouple,pipeline,loss-latency sweep_val=10000
if [[ -n "${SMOKE:-}" ]]; then
    DEVICE=cpu gpu=(--device cpu) epochs=1 small=(--train-subset 1000 --val-subset 500) targets=2 finetune=0
    methods=refine,channel+decouple sweep_val=500
fi

installed() {  # the registries read entry points (e.g. how a converted model is rebuilt): the package must be installed
    "$PYTHON" -c "import importlib.metadata as m; m.version('mobilenets')" 2>/dev/null ||
        "$PYTHON" -m pip install --no-deps --no-build-isolation --no-index . > "$OUT/logs/install.log" 2>&1 ||
        echo "pip install failed: see logs/install.log (converted models will not load)"
}

versions() {  # beside every number: the device, its driver and the software
    { nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
      "$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
      date -u +%FT%TZ; } > "$OUT/versions.txt"
}

fp16_parts() {  # run folder -> $OUT/NAME.safetensors.part-aa, -ab ... (15 MiB each)
    "$PYTHON" - "$1" "$2" <<'EOF'
import sys
import mobilenets
from mobilenets.predict import default_data_info
from mobilenets.models import load_model_with_info
model, info = load_model_with_info(f"{sys.argv[1]}/best.pt")
mobilenets.save_weights(model.half(), sys.argv[2], data_info=default_data_info(model, info))
EOF
    split -b 15m "$2" "$OUT/$(basename "$2").part-"
}

if [[ "$step" != prepare && "$step" != unpack && ! -d "$DATA" && -e .gpu/cifar10.tar.gz ]]; then
    tar xzf .gpu/cifar10.tar.gz -C .gpu  # the first call of a window: the carried archive
fi

case "$step" in
prepare)
    # one archive, not the folder: the device tool counts each of the 60,000 small files with its overhead
    # (the folder did not fit in 64 MiB), while gzip shares the JPEGs' common headers (55 MiB -> 19 MiB)
    set -e
    rm -rf .gpu && mkdir -p .gpu && tar czf .gpu/cifar10.tar.gz -C ../shared/data cifar10
    du -sh --apparent-size .gpu  # with the repository (~4 MiB) this must stay under the 64 MiB a call carries
    ;;
regular)
    : "${OUT:?OUT: the folder whose files come back}"
    mkdir -p "$OUT/logs" runs && versions && installed
    for model in vgg16 resnet18; do  # ~2 minutes each on an H100, side by side
        timeout "$LIMIT" "$PYTHON" -m mobilenets train --model "$model" --recipe cifar10 --data-dir "$DATA" \
            --out "runs/$model" "${gpu[@]}" "${small[@]}" --batch-size 256 --lr 0.1 --epochs "$epochs" \
            > "$OUT/logs/train_$model.log" 2>&1 &
    done
    wait
    for model in vgg16 resnet18; do
        [[ -e "runs/$model/best.pt" ]] || { echo "runs/$model has no best.pt: see logs/train_$model.log"; continue; }
        cp "runs/$model/metrics.jsonl" "$OUT/logs/train_$model.metrics.jsonl"
        fp16_parts "runs/$model" "runs/${model}_fp16.safetensors"
    done
    # accuracy here (the converted copies scored on the GPU, all 10,000 test images), training-free and after 1
    # epoch of fine-tuning; one process per network, method and target, one thread each, so that the
    # conversions (on the CPU, up to minutes each) run side by side on the 16 cores; the latency columns are this
    # machine's CPU and are measured again at home from the returned weights; `decouple_speed.py --from-json A
    # --from-json B ...` joins the processes' tables
    for model in vgg16 resnet18; do
        [[ -e "runs/$model/best.pt" && "${SWEEP:-1}" != 0 ]] || continue  # SWEEP=0: the networks alone
        for method in ${methods//,/ }; do
            for target in ${targets//,/ }; do
                name="decouple_${model}_${method}_$target"
                timeout "$SWEEP_LIMIT" "$PYTHON" benchmarks/decouple_speed.py --checkpoint "runs/$model/best.pt" \
                    --data-dir "$DATA" --eval-data "$DATA" --val-subset "$sweep_val" --calibration "$DATA/train" \
                    --methods "$method" --targets "$target" --finetune-epochs "$finetune" --device "$DEVICE" \
                    --threads 1 --runs 3 --json "$OUT/logs/$name.json" > "$OUT/logs/$name.log" 2>&1 &
            done
        done
    done
    wait
    tar czf "$OUT/logs.tar.gz" -C "$OUT" logs versions.txt && rm -r "$OUT/logs" "$OUT/versions.txt"
    ;;
fast)
    : "${OUT:?}"
    mkdir -p "$OUT/logs" && versions
    extra=(--compile-mode reduce-overhead --batch-size 512 --lr 0.4 --epochs 30)
    [[ -n "${SMOKE:-}" ]] && extra=(--batch-size 128 --lr 0.4 --epochs 1)
    # the whole command is what the goal times: data decoding included
    start=$(date +%s)
    timeout "$LIMIT" "$PYTHON" -m mobilenets train --model mobilenet_v2 --recipe cifar10 --data-dir "$DATA" \
        --out runs/fast "${gpu[@]}" "${small[@]}" "${extra[@]}" --schedule onecycle --warmup-epochs 3 \
        --label-smoothing 0.1 --test-flip > "$OUT/logs/fast.log" 2>&1 || echo "train exit $?" >> "$OUT/logs/fast.log"
    echo "command seconds $(($(date +%s) - start))" >> "$OUT/logs/fast.log"
    cp runs/fast/metrics.jsonl runs/fast/config.json "$OUT/logs/" 2>/dev/null || true
    tar czf "$OUT/fast.tar.gz" -C "$OUT" logs versions.txt && rm -r "$OUT/logs" "$OUT/versions.txt"
    ;;
grid)
    : "${OUT:?}"
    mkdir -p "$OUT/logs" && versions
    GRID=${GRID:-seed} SEEDS=${SEEDS:-0} quick=()
    CELLS=${CELLS:-$("$PYTHON" -c "import sys; sys.path.insert(0, 'benchmarks'); import cifar_ablation as c
print(' '.join(r.name for r in c.GRIDS['$GRID']))")}
    [[ -n "${SMOKE:-}" ]] && quick=(--quick)
    for cell in $CELLS; do
        for seed in $SEEDS; do
            timeout "$LIMIT" "$PYTHON" benchmarks/cifar_ablation.py --grid "$GRID" --only "$cell" --seeds "$seed" \
                --out runs/cifar --data-dir "$DATA" --device "$DEVICE" "${quick[@]}" \
                > "$OUT/logs/$GRID-$cell-seed$seed.log" 2>&1 &
        done
    done
    wait
    # one table and plot over every finished cell (each process above plotted only its own)
    "$PYTHON" benchmarks/cifar_ablation.py --grid "$GRID" --seeds "${SEEDS// /,}" --out runs/cifar --report \
        "${quick[@]}" > "$OUT/logs/$GRID-table.md" 2>&1
    tar czf "$OUT/cifar_runs.tar.gz" --exclude='*.pt' runs/cifar -C "$OUT" logs versions.txt
    rm -r "$OUT/logs" "$OUT/versions.txt"
    ;;
unpack)
    from=${2:?"unpack needs the folder the device's files landed in"}
    for parts in "$from"/*.safetensors.part-aa; do
        [[ -e "$parts" ]] || continue
        name=$(basename "$parts" .part-aa)
        mkdir -p runs/gpu && cat "${parts%aa}"* > "runs/gpu/$name" && echo "runs/gpu/$name"
    done
    for archive in "$from"/*.tar.gz; do
        [[ -e "$archive" ]] && mkdir -p runs/gpu && tar xzf "$archive" -C runs/gpu && echo "$archive -> runs/gpu"
    done
    ;;
*)
    echo "unknown step $step: prepare, regular, fast, grid or unpack" >&2
    exit 2
    ;;
esac
