#!/usr/bin/env bash
# A lent GPU machine's one run: the CUDA tests, then stage one (issue 20): the plain anchor and bf16 end to end,
# the CPU's decode rate per core and with extract's workers (decode_rate.py: when GPU JPEG decoding would pay),
# then each speed lever alone (bf16 weights, compile with its compile time, fp8 with its error table).
#
# Writes each step's output under $OUT (the device tool's folder; ./gpu-out elsewhere) as it goes, so a
# run cut short still returns what it measured. Steps are ordered by value and each has its own time
# limit, none more than what is left of BUDGET seconds (default 500: inside one 600 s call; about 8 minutes).
# Installs expclip (editable, no dependencies) and any wheels in .whl/ (open_clip_torch, ftfy and
# wcwidth are missing from the lent machines' image, and torchao 0.18 for --precision fp8; see the device tool's
# README for fetching them). STAGE_TWO=1 adds stage two's benchmark first.
# Usage: COMMIT=$(git rev-parse --short HEAD) bash benchmarks/on_gpu.sh [BUDGET]
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
budget=${1:-500}
started=$(date +%s)
left() { echo $((budget - ($(date +%s) - started))); }
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  commit: ${COMMIT:-unknown}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    lscpu | grep -m1 "Model name"
    echo "cores: $(nproc)"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > "$out/install.log" 2>&1
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >> "$out/install.log" 2>&1 \
    || { echo "install failed"; cat "$out/install.log"; exit 1; }
python3 -c "import expclip, open_clip, torch; print('expclip', expclip.__version__, 'torch', torch.__version__)"

timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/test_levers.py::test_fp8_layers_stay_close_to_bf16 > "$out/test_cuda.log" 2>&1
echo "test_cuda rc=$?"; tail -n 15 "$out/test_cuda.log"

if [ -n "${STAGE_TWO:-}" ]; then  # issue 20's run is stage one's: stage two only when asked
    timeout $(( $(left) < 200 ? $(left) : 200 )) python3 benchmarks/stage_two.py --skip-cpu --bf16-epochs 0 \
        --grid-epochs 5 > "$out/stage_two.log" 2>&1
    echo "stage_two rc=$?"; cat "$out/stage_two.log"
fi

# Stage one: the plain anchor and bf16 e2e for both configurations, then each lever alone (benchmarks/levers.py),
# each step limited so that the later ones keep their share: lever runs time FACES/2 faces each, fp8's error
# table 10,240 faces of CLIP and ERROR_TEACHER faces of the float32 teacher (about 50 faces/s on an H100).
step() {  # step NAME SECONDS COMMAND...: run with the smaller of SECONDS and what is left
    local name=$1 most=$2; shift 2
    if [ "$(left)" -lt 60 ]; then echo "$name skipped: $(left) s left"; return; fi
    timeout $(( $(left) < most ? $(left) : most )) "$@" > "$out/$name.txt" 2> "$out/$name.log"
    echo "$name rc=$?"; cat "$out/$name.txt"; grep -v "━" "$out/$name.log" | tail -n 20
}
faces=${FACES:-10240}
step stage_one 170 python3 benchmarks/stage_one.py --faces "$faces"
# 8,192 faces: three timed batches of 256 per worker after each one's warm-up batch (8 workers on 16 cores).
step decode_rate 40 python3 benchmarks/decode_rate.py --faces 8192
step lever-bf16-weights 70 python3 benchmarks/levers.py --lever bf16-weights --faces $((faces / 2))
step lever-compile 150 python3 benchmarks/levers.py --lever compile --faces $((faces / 2))
step lever-fp8 130 python3 benchmarks/levers.py --lever fp8 --faces $((faces / 2)) --error-faces 10240 \
    --error-teacher-faces "${ERROR_TEACHER:-2048}"
