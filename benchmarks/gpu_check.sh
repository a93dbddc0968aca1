#!/usr/bin/env bash
# The GPU checks of the speed work in one call (a lent GPU machine's time is short): the CUDA tests, bench_speed's
# rows at 512x512 (sequential against the fast default and its variants), one 300-slice 512x512 volume with the
# variant that reached the sequential quality soonest (at that budget), timed against a deadline, and the
# per-iteration times against the computed bound if time is left.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        (default gpu_out; logs and JSON land there, 8 files)
#
# Environment: IMAGE (DICOM slice; default pydicom's 693_UNCR.dcm), BANDWIDTH (GB/s of the card, for the printed
# bound; default 4800 on an H200, else 3350, H100 SXM), BUDGET (seconds for the whole script, default 540), DEVICE (default
# cuda), SIZE (default 512), SLICES (default 16), VOLUME (slices, default 300), ITERATIONS (the fast rows' cap,
# default 600), VARIANTS (default "e1:ensemble=1 c2:compile=true c1:ensemble=1,compile=true").
set -u
out=${1:-gpu_out}
mkdir -p "$out"
start=$SECONDS
budget=${BUDGET:-540}
size=${SIZE:-512}
cap=${ITERATIONS:-600}
image=()
[ -n "${IMAGE:-}" ] && image=(--image "$IMAGE")
variants=()
for v in ${VARIANTS:-e1:ensemble=1 c2:compile=true c1:ensemble=1,compile=true}; do variants+=(--variant "$v"); done
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
[[ "$card" == *H200* ]] && bandwidth=${BANDWIDTH:-4800} || bandwidth=${BANDWIDTH:-3350}
bench=(python3 benchmarks/bench_speed.py --device "${DEVICE:-cuda}" "${image[@]}" --bandwidth-gbs "$bandwidth"
       --sizes "$size")
left() { echo $((budget - (SECONDS - start))); }
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$out/machine.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/pytest.txt"
timeout $(($(left) < 260 ? $(left) : 260)) "${bench[@]}" --slices "${SLICES:-16}" --sequential-slices 1 \
    --fast-iterations "$cap" --refine 2 "${variants[@]}" --json "$out/speed.json" 2>&1 | tee "$out/speed.txt"

# The volume: the row (fast or a variant) with the shortest time to quality, at the budget that reached it.
best=$(python3 - "$out/speed.json" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except (OSError, ValueError, KeyError):
    rows = []
ok = [r for r in rows if r["strategy"] != "sequential" and r["time_to_quality_s"] is not None]
if ok:
    r = min(ok, key=lambda r: r["time_to_quality_s"])
    its = next(run["iterations"] for run in r["runs"] if run["seconds"] == r["time_to_quality_s"])
    cfg = r["config"]
    print(f"best:ensemble={cfg['ensemble']},compile={str(cfg['compile']).lower()},amp={str(cfg['amp']).lower()},"
          f"iterations={its}")
PY
)
echo "volume variant: ${best:-fast (no row reached the target)}"
if [ "$(left)" -gt 90 ]; then
    deadline=$(($(left) - 70))
    [ -n "$best" ] && vv=(--variant "$best" --volume-variant best) || vv=()
    timeout $((deadline + 60)) "${bench[@]}" --skip-rows --fast-iterations "$cap" "${vv[@]}" --volume "${VOLUME:-300}" \
        --deadline "$deadline" --json "$out/volume.json" 2>&1 | tee "$out/volume.txt"
fi
if [ "$(left)" -gt 50 ]; then
    timeout $(($(left) - 5)) "${bench[@]}" --skip-rows --iteration-batches 16 \
        --iteration-modes bf16:amp=true bf16-compiled:amp=true,compile=true --json "$out/iterations.json" 2>&1 \
        | tee "$out/iterations.txt"
fi
echo "gpu_check: $((SECONDS - start)) s"
