#!/usr/bin/env bash
# The GPU checks of the speed work in one call: the CUDA tests, bench_speed's rows and per-iteration times at
# 256x256 and 512x512, then one 300-slice 512x512 volume timed against a deadline.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        (default gpu_out; logs and JSON land there)
#
# Environment: IMAGE (DICOM slice to crop; default pydicom's 693_UNCR.dcm), BANDWIDTH (GB/s of the card, for the
# printed bound; default 3350, H100 SXM), BUDGET (seconds for the whole script, default 540), DEVICE (default
# cuda), SIZES (default "256 512"), SLICES (default 8), VOLUME (slices, default 300).
set -u
out=${1:-gpu_out}
mkdir -p "$out"
start=$SECONDS
budget=${BUDGET:-540}
device=${DEVICE:-cuda}
image=()
[ -n "${IMAGE:-}" ] && image=(--image "$IMAGE")
bench=(python3 benchmarks/bench_speed.py --device "$device" "${image[@]}" --bandwidth-gbs "${BANDWIDTH:-3350}"
       --variant fp32:amp=false)
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$out/machine.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/pytest.txt"
# shellcheck disable=SC2086
timeout 240 "${bench[@]}" --sizes ${SIZES:-256 512} --slices "${SLICES:-8}" --sequential-slices 1 \
    --fast-iterations 600 --refine 1 --iteration-batches 1 4 16 --iteration-modes fp32:amp=false bf16:amp=true \
    --json "$out/speed.json" 2>&1 \
    | tee "$out/speed.txt"
left=$((budget - (SECONDS - start) - 60))
if [ "$left" -gt 60 ]; then
    size=${SIZES:-512}
    # the deadline counts from the start of the fit; imports, CUDA start-up and the noise take ~30 s before it
    timeout $((left + 60)) "${bench[@]}" --sizes "${size##* }" --skip-rows --volume "${VOLUME:-300}" \
        --deadline "$((left - 30))" --json "$out/volume.json" 2>&1 | tee "$out/volume.txt"
fi
echo "gpu_check: $((SECONDS - start)) s"
