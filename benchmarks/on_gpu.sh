#!/usr/bin/env bash
# A lent GPU machine's one run: the CUDA tests, stage two, then stage one in the time left.
#
# Writes each step's output under $OUT (the device tool's folder; ./gpu-out elsewhere) as it goes, so a
# run cut short still returns what it measured. Steps are ordered by value and each has its own time
# limit, the last one taking what is left of BUDGET seconds (default 450: inside one 600 s call).
# Installs expclip (editable, no dependencies) and any wheels in .whl/ (open_clip_torch, ftfy and
# wcwidth are missing from the lent machines' image; see the device tool's README for fetching them).
# Usage: COMMIT=$(git rev-parse --short HEAD) bash benchmarks/on_gpu.sh [BUDGET]
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
budget=${1:-450}
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

timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$out/test_cuda.log" 2>&1
echo "test_cuda rc=$?"; tail -n 15 "$out/test_cuda.log"

timeout $(( $(left) < 200 ? $(left) : 200 )) python3 benchmarks/stage_two.py --skip-cpu --bf16-epochs 0 \
    --grid-epochs 5 > "$out/stage_two.log" 2>&1
echo "stage_two rc=$?"; cat "$out/stage_two.log"

if [ "$(left)" -gt 120 ]; then
    timeout "$(left)" python3 benchmarks/stage_one.py --faces "${FACES:-10240}" > "$out/stage_one.txt" 2> "$out/stage_one.log"
    echo "stage_one rc=$?"; cat "$out/stage_one.txt"; grep -v "━" "$out/stage_one.log" | tail -n 40
else
    echo "stage_one skipped: $(left) s left"
fi
