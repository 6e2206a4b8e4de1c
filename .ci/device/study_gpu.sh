#!/usr/bin/env bash
# The EuroSAT study on a lent GPU (issue 17): configs/study_eurosat.py:gpu, ResNet-18, 64 px,
# batch 512, bf16, 100 epochs per arm; each finished arm's JSON lands in $OUT at once.
#
# Why phases: a device call carries at most 64 MiB and runs at most 10 min; EuroSAT RGB is
# 89 MB of jpg, so it travels in two halves (two calls on the same warm machine), unpacked
# OUTSIDE the checkout (/tmp/eurosat_rgb), where the next call on that machine still finds it.
# A machine stays warm only ~30 s after a call: make call 2 right after call 1 returns.
#
# Exact sequence (a session with a GPU lent; 15 min of device time in all):
#   0. here, no device time:      .ci/device/study_gpu.sh pack
#        (wheels the GPU image lacks -> .whl/, EuroSAT halves -> .carry/eurosat/part{0,1}.{bin,json},
#         the commit -> .carry/commit; all git-ignored; ~50 MiB per call with the tree)
#   1. run(command=".ci/device/study_gpu.sh half1", timeout_s=300,   (unpacks half 1, then benches
#          the ResNet-50 SimCLR row beside torch.compile: a result even if call 2 finds a cold machine)
#          carry=[".whl", ".carry/eurosat/part0.bin", ".carry/eurosat/part0.json", ".carry/commit", ".carry/manifest.json"])
#   2. AT ONCE after 1 returns:
#      run(command=".ci/device/study_gpu.sh run", timeout_s=600,
#          carry=[".whl", ".carry/eurosat/part1.bin", ".carry/eurosat/part1.json", ".carry/commit", ".carry/manifest.json"])
#        unpacks half 2, runs the arms in order random_init, simclr, moco_v2, swimdiff (a failing
#        arm records its error and the next one starts), starting no new run (arm x seed) after
#        STUDY_BUDGET_S (default 330 s) and killing the study at STUDY_TIMEOUT_S (default 560 s).
#        $OUT gets study_gpu_<arm>.json per finished arm + study_gpu.log (<= 8 files).
#   3. if arms remain and device time is left, at once: the same call as 2 again (resumes at
#      the next arm; finished arms are copied to $OUT again). Else give_back().
#   4. here: cp <files_at>/study_gpu_*.json results/ && python -m rsjax.results
#      (regenerates the README table) && python -m rsjax.results --check; the lead commits.
# If call 2 says "half 1 is missing", the machine was not the warm one of call 1: redo 1 and 2.
#
# CPU check of the same core (no GPU; a few hundred images, tiny encoder, 2 steps per arm):
#   .ci/device/study_gpu.sh cpu-check [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${EUROSAT_DIR:-/tmp/eurosat_rgb}
WORKDIR=${STUDY_WORKDIR:-/tmp/rsjax_study_gpu}
OUT_DIR=${OUT:-/tmp/rsjax_study_out}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/rsjax_jax_cache}  # survives calls on a warm machine
export PYTHONUNBUFFERED=1

install_wheels() {  # the GPU image lacks grain (+ array_record, portpicker) and ml_collections
    if [ -n "${RSJAX_NO_WHEELS:-}" ]; then  # a dry run of the phases on a machine that has them
        export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}; return
    fi
    if [ ! -f /tmp/site/.rsjax_installed ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        touch /tmp/site/.rsjax_installed
    fi
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
}

commit_env() {  # the device's tree has no .git: stamp it now against what `pack` recorded
    if [ -z "${RSJAX_GIT_COMMIT:-}" ] && [ -f .carry/manifest.json ]; then
        export RSJAX_GIT_COMMIT=$(python3 .ci/device/stamp.py check)
    fi
    echo "commit ${RSJAX_GIT_COMMIT:-from the git checkout} (stamped at run time)"
}

versions() {  # first line of every call: the image's versions; stop before any work on a mismatch
    python3 -m rsjax.versions --check || { echo "package versions do not fit pyproject.toml: stopping" >&2; exit 3; }
}

case "${1:-}" in
pack)
    python3 .ci/device/pack_folder.py pack "${2:-../shared/data/eurosat_rgb}" .carry/eurosat 2
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 ml_collections==1.1.0
    python3 .ci/device/stamp.py pack >/dev/null   # commit + blob hashes; the stamp itself is made at run time
    du -ch .whl .carry/eurosat/part0.* .carry/commit .carry/manifest.json | tail -1
    ;;
half1)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    install_wheels
    versions
    rm -rf "$DATA" && mkdir -p "$DATA"
    python3 .ci/device/pack_folder.py unpack .carry/eurosat/part0 "$DATA"
    touch "$DATA/.half1"
    python3 -c "import jax, flax, grain, ml_collections; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
    # Call 1 is never wasted: if call 2 misses the warm window (~30 s), the ResNet-50 224 px SimCLR
    # row beside the compiled torch peer (issue 28's priority 2) is already in $OUT.
    if [ -z "${HALF1_NO_BENCH:-}" ]; then
        commit_env
        OUT="$OUT_DIR" PARTS=simclr_bench BENCH_TOTAL_S="${HALF1_BENCH_S:-120}" .ci/device/bench_gpu.sh || true
    fi
    ;;
run)
    [ -f "$DATA/.half1" ] || { echo "half 1 is missing in $DATA: a fresh machine; redo call 1 (half1), then 2" >&2; exit 3; }
    install_wheels
    versions
    commit_env
    if [ ! -f "$DATA/.half2" ]; then
        python3 .ci/device/pack_folder.py unpack .carry/eurosat/part1 "$DATA"
        touch "$DATA/.half2"
    fi
    n=$(find "$DATA" -name '*.jpg' | wc -l)
    [ "$n" = 27000 ] || { echo "EuroSAT RGB in $DATA has $n jpgs, not 27000" >&2; exit 3; }
    mkdir -p "$OUT_DIR"
    set -o pipefail
    timeout "${STUDY_TIMEOUT_S:-560}" python3 -m rsjax.main --config=configs/study_eurosat.py:gpu \
        --workdir="$WORKDIR" --config.data.folder="$DATA" --config.study.out_dir="$OUT_DIR" \
        --config.study.time_budget_s="${STUDY_BUDGET_S:-330}" "${@:2}" 2>&1 | tee -a "$OUT_DIR/study_gpu.log"
    ;;
cpu-check)
    # The `run` phase's core on this CPU: a class-balanced subset of EuroSAT (30 jpgs per class,
    # 240 train / 60 test), the tiny encoder at 32 px, 2 steps per arm, every arm of :gpu.
    src=${EUROSAT_SRC:-../shared/data/eurosat_rgb}
    tiny=/tmp/rsjax_eurosat_tiny
    rm -rf "$tiny" && mkdir -p "$tiny"
    for d in "$src"/*/; do
        c=$(basename "$d"); mkdir -p "$tiny/$c"
        files=("$(realpath "$d")"/*.jpg)  # glob order is sorted
        for f in "${files[@]:0:30}"; do ln -s "$f" "$tiny/$c/"; done
    done
    out=${2:-/tmp/rsjax_study_cpu_check}
    rm -rf "$out" /tmp/rsjax_study_cpu_check_wd && mkdir -p "$out"
    commit_env
    python3 -m rsjax.main --config=configs/study_eurosat.py:gpu --workdir=/tmp/rsjax_study_cpu_check_wd \
        --config.data.folder="$tiny" --config.study.out_dir="$out" --config.study.name=gpu_cpucheck \
        --config.max_steps_per_arm=2 --config.model.name=tiny --config.data.image_size=32 \
        --config.batch_size=16 --config.eval.linear_epochs=20 --config.eval.batch_size=128 \
        --config.swimdiff_diffusion_size=16 --config.swimdiff_denoiser_channels=8 "${@:3}" 2>&1 | tee "$out/study_gpu.log"
    ls -la "$out"
    ;;
*)
    sed -n '2,31p' "$0"; exit 2
    ;;
esac
