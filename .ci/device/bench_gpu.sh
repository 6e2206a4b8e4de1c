#!/usr/bin/env bash
# Issue 18 on a lent GPU, ONE device call (~9 min): the throughput table of README.md
# (`python -m rsjax.bench`) and the SwiMDiff end-to-end wall time of
#   python -m rsjax.main --config=configs/study_eurosat.py:gpu --config.study.arms=swimdiff
# Every piece writes into $OUT as soon as it finishes, so a cut-off call returns what finished:
#   $OUT/bench_<dev>_<date>.json   rows appended by `rsjax.bench --out` (rsjax.bench/v1)
#   $OUT/e2e_swimdiff_<dev>_<date>.json   wall seconds of the study command, cold / warm cache
#   $OUT/bench_gpu.log                    everything printed
#
# Sequence (a session with a GPU lent):
#   0. here, no device time: .ci/device/bench_gpu.sh pack   (the wheels the GPU image lacks ->
#      .whl/: grain, array_record, portpicker, ml_collections; the commit and blob hashes -> .carry/; git-ignored)
#   1. run(command=".ci/device/bench_gpu.sh", timeout_s=600, carry=[".whl", ".carry/commit", ".carry/manifest.json"])
#   2. here: cp <files_at>/bench_*.json results/ && python -m rsjax.results && python -m rsjax.results --check
#      (the README throughput table gains a table for the new device/date); put the e2e numbers
#      and each measured prediction into docs/performance.md.
#
# Order = priority, under one budget (BENCH_TOTAL_S, default 540 s; a step starts only with
# >= 40 s left and is killed at min(its cap, what is left)):
#   simclr:bench --peer=torch (the R50 headline), simclr:bench_eurosat --peer=torch,
#   SwiMDiff end to end with an EMPTY persistent compilation cache (cold),
#   swimdiff:bench_eurosat, moco:bench_eurosat, moco:bench, swimdiff:bench,
#   SwiMDiff end to end again on the filled cache (warm).
# PARTS=a,b,... runs only those steps (names: simclr_bench simclr_eurosat e2e_cold swimdiff_eurosat
# moco_eurosat moco_bench swimdiff_bench e2e_warm), e.g. a second call for what the first cut off.
#
# Data of the end-to-end run: EuroSAT RGB if $EUROSAT_DIR holds its 27,000 jpgs (e.g. left by
# study_gpu.sh on the same warm machine); otherwise (one call cannot carry its 89 MB) a SYNTHETIC
# class folder of the same shape is written there first: 10 classes with EuroSAT's counts, 64 px
# RGB jpgs. Wall time then covers the same decode, compile, training and probe work; the
# accuracies it prints mean nothing, and the JSON says which data ran ("data").
#
# Compilation cache: the end-to-end runs use JAX_COMPILATION_CACHE_DIR (emptied before the cold
# run). The bench steps run without it, so their compile_s is always a real compile.
#
# CPU check with tiny shapes (no GPU; :smoke configs, 2 timed steps, tiny study on 30 synthetic
# jpgs per class; the torch peer then records "no CUDA device"):
#   BENCH_TINY=1 OUT=/tmp/bench_cpu_check .ci/device/bench_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = pack ]; then
    mkdir -p .whl .carry
    ls .whl/grain-0.2.18-*.whl .whl/array_record-0.8.6-*.whl .whl/portpicker-1.6.0-*.whl \
        .whl/ml_collections-1.1.0-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps \
        --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 ml_collections==1.1.0
    python3 .ci/device/stamp.py pack >/dev/null   # commit + blob hashes; the stamp itself is made at run time
    du -ch .whl .carry/commit .carry/manifest.json | tail -1
    exit 0
fi

PY=${PYTHON:-python3}
TINY=${BENCH_TINY:-0}
OUT_DIR=${OUT:-/tmp/rsjax_bench_out}
TOTAL_S=${BENCH_TOTAL_S:-540}
PARTS=${PARTS:-simclr_bench,simclr_eurosat,e2e_cold,swimdiff_eurosat,moco_eurosat,moco_bench,swimdiff_bench,e2e_warm}
DATA=${EUROSAT_DIR:-/tmp/eurosat_rgb}
CACHE=${JAX_CACHE:-/tmp/rsjax_jax_cache_e2e}
START=$(date +%s)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/bench_gpu.log"

log() { echo "[bench_gpu +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

if ! $PY -c "import grain, ml_collections" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    # the GPU image lacks grain (+ array_record, portpicker) and ml_collections (KINDS.md)
    if [ ! -f /tmp/site/.rsjax_installed ]; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && touch /tmp/site/.rsjax_installed
    fi
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
# First line of the call: the image's versions; stop before any work on a mismatch.
$PY -m rsjax.versions --check || { echo "package versions do not fit pyproject.toml: stopping" >&2; exit 3; }
if [ -z "${RSJAX_GIT_COMMIT:-}" ] && [ -f .carry/manifest.json ]; then  # the device's tree has no .git:
    export RSJAX_GIT_COMMIT=$($PY .ci/device/stamp.py check)            # stamp it now against the pack
fi

if [ "$TINY" = 1 ]; then
    DEV=cpu
    VARIANT_R50=smoke; VARIANT_R18=smoke; STEPS="--steps=2 --warmup=1"
else
    DEV=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -oiE 'h100|h200|a100|l4' | tr 'A-Z' 'a-z')
    DEV=${DEV:-gpu}
    VARIANT_R50=bench; VARIANT_R18=bench_eurosat; STEPS="--steps=20 --warmup=3"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader 2>&1 | tee -a "$LOG"
fi
DATE=$(date -u +%Y-%m-%d)
BENCH_JSON="$OUT_DIR/bench_${DEV}_${DATE}.json"
E2E_JSON="$OUT_DIR/e2e_swimdiff_${DEV}_${DATE}.json"
log "python: $($PY -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())' 2>&1 | tail -1)"

# Runs "$@" under `timeout` if the budget allows; $1 = name, $2 = cap in seconds.
timed() {
    local name=$1 cap=$2; shift 2
    case ",$PARTS," in *",$name,"*) ;; *) log "skip $name (not in PARTS)"; return 0 ;; esac
    local left=$(( TOTAL_S - ($(date +%s) - START) ))
    if [ "$left" -lt 40 ]; then log "skip $name: ${left}s of the budget left"; return 0; fi
    local t=$(( cap < left ? cap : left ))
    log "start $name (timeout ${t}s)"
    local t0=$EPOCHREALTIME
    timeout -k 5 "$t" "$@" 2>&1 | tee -a "$LOG" | tail -n 4
    LAST_RC=${PIPESTATUS[0]}
    LAST_T0=$t0; LAST_T1=$EPOCHREALTIME
    log "end $name: rc=$LAST_RC$( [ "$LAST_RC" = 124 ] || [ "$LAST_RC" = 137 ] && echo ' (killed at its timeout)')"
    return 0
}

bench() {  # name cap config input [peer]
    local name=$1 cap=$2 cfg=$3 input=$4 peer=${5:-}
    LAST_RC=
    timed "$name" "$cap" env -u JAX_COMPILATION_CACHE_DIR $PY -m rsjax.bench --config="$cfg" --input="$input" \
        $STEPS ${peer:+--peer=$peer} --out="$BENCH_JSON"
}

make_data() {  # EuroSAT RGB if present, else a synthetic folder of its shape
    local per_class=$1
    local n=$(find "$DATA" -name '*.jpg' 2>/dev/null | wc -l)
    if [ "$TINY" != 1 ] && [ "$n" = 27000 ]; then DATA_KIND="EuroSAT RGB (27,000 jpgs in $DATA)"; return; fi
    DATA=/tmp/rsjax_eurosat_synthetic_$per_class
    DATA_KIND="synthetic EuroSAT-shaped class folder (10 classes, 64 px RGB jpg, ${per_class:-the EuroSAT counts} per class)"
    [ -f "$DATA/.done" ] && return
    rm -rf "$DATA"
    $PY - "$DATA" "$per_class" <<'EOF'
import concurrent.futures, os, sys
import numpy as np
from PIL import Image
root, per = sys.argv[1], sys.argv[2]
counts = {"AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000, "Highway": 2500, "Industrial": 2500,
          "Pasture": 2000, "PermanentCrop": 2500, "Residential": 3000, "River": 2500, "SeaLake": 3000}
def write(args):
    c, k, n = args
    rng = np.random.default_rng(1000 * k + 7)
    os.makedirs(os.path.join(root, c), exist_ok=True)
    for i in range(n):  # smooth fields + noise: jpg sizes and decode work near real tiles
        base = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
        img = np.kron(base, np.ones((8, 8, 1), np.float32)) + rng.normal(0, 12, (64, 64, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(root, c, f"{c}_{i + 1}.jpg"), quality=90)
jobs = [(c, k, int(per) if per else n) for k, (c, n) in enumerate(counts.items())]
with concurrent.futures.ProcessPoolExecutor(min(10, os.cpu_count() or 1)) as ex:
    list(ex.map(write, jobs))
print("wrote", sum(j[2] for j in jobs), "jpgs into", root)
EOF
    touch "$DATA/.done"
}

e2e() {  # name cap cache_state
    local name=$1 cap=$2 state=$3
    case ",$PARTS," in *",$name,"*) ;; *) log "skip $name (not in PARTS)"; return 0 ;; esac
    if [ "$TINY" = 1 ]; then make_data 30; else make_data ""; fi
    [ "$state" = cold ] && rm -rf "$CACHE"
    mkdir -p "$CACHE"
    local wd=/tmp/rsjax_e2e_$name
    rm -rf "$wd"
    local cmd=(python -m rsjax.main --config=configs/study_eurosat.py:gpu --config.study.arms=swimdiff
               --workdir="$wd" --config.data.folder="$DATA")
    if [ "$TINY" = 1 ]; then
        cmd+=(--config.max_steps_per_arm=2 --config.model.name=tiny --config.data.image_size=32
              --config.batch_size=16 --config.eval.linear_epochs=20 --config.eval.batch_size=128
              --config.swimdiff_diffusion_size=16 --config.swimdiff_denoiser_channels=8)
    fi
    LAST_RC=
    timed "$name" "$cap" env JAX_COMPILATION_CACHE_DIR="$CACHE" $PY "${cmd[@]:1}"
    [ -n "$LAST_RC" ] || return 0  # skipped: nothing to record
    E2E_T0=$LAST_T0 E2E_T1=$LAST_T1 E2E_RC=$LAST_RC E2E_STATE=$state E2E_CMD="${cmd[*]}" E2E_DATA="$DATA_KIND" \
        E2E_CACHE="$CACHE" E2E_OUT="$E2E_JSON" E2E_WD="$wd" $PY - <<'EOF'
import glob, json, os
from rsjax import results
env = os.environ
out = env["E2E_OUT"]
payload = {"kind": "rsjax.e2e/v1", "what": "wall time of the SwiMDiff study arm, end to end", "runs": []}
if os.path.exists(out):
    payload = json.load(open(out))
arm = {}  # the arm's own record: pretrain_s (training loop without compile), steps
for p in glob.glob(os.path.join(env["E2E_WD"], "**", "*.json"), recursive=True):
    if "swimdiff" in p:
        d = json.load(open(p))
        d = (d.get("runs") or [d])[0] if isinstance(d, dict) else {}
        if isinstance(d, dict) and "pretrain_s" in d:
            arm = d
run = {"cache": env["E2E_STATE"], "wall_s": float(env["E2E_T1"]) - float(env["E2E_T0"]), "rc": int(env["E2E_RC"]),
       "timed_out": int(env["E2E_RC"]) in (124, 137), "data": env["E2E_DATA"],
       "cache_files_after": len(os.listdir(env["E2E_CACHE"])),
       "arm_pretrain_s": arm.get("pretrain_s"), "arm_steps": arm.get("steps"),
       "provenance": results.provenance(env["E2E_CMD"])}
payload["runs"].append(run)
results.save(payload, out)
print("e2e", run["cache"], f"{run['wall_s']:.1f} s", "rc", run["rc"], "->", out)
EOF
}

bench simclr_bench     240 configs/simclr.py:$VARIANT_R50   views          torch
bench simclr_eurosat   150 configs/simclr.py:$VARIANT_R18   device_augment torch
e2e   e2e_cold         260 cold
bench swimdiff_eurosat 120 configs/swimdiff.py:$VARIANT_R18 device_augment
bench moco_eurosat      90 configs/moco.py:$VARIANT_R18     device_augment
bench moco_bench        90 configs/moco.py:$VARIANT_R50     views
bench swimdiff_bench   120 configs/swimdiff.py:$VARIANT_R50 views
e2e   e2e_warm         200 warm

log "done; files in $OUT_DIR:"
ls -la "$OUT_DIR" | tee -a "$LOG"
if [ -f "$BENCH_JSON" ]; then  # the table this run adds to README.md, last in the output
    BENCH_JSON=$BENCH_JSON $PY - <<'EOF'
import os
from rsjax import results
f = os.environ["BENCH_JSON"]
print(results.render_bench_table(results.load_all(os.path.basename(f), os.path.dirname(f))))
EOF
fi
