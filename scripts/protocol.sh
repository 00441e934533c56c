#!/usr/bin/env bash
# The evaluation protocols of the CoOp family, written once for every method.
#
# scripts/method.sh (which every scripts/<method>/*.sh calls) sets TRAINER and the method's default configs
# (CFG_B2N, CFG_XD, CFG_FS, CFG_DIGITS, read from its trainer class) and calls this file:
#   protocol.sh base2new_train DATASET SEED [MAX_EPOCH]   train on base classes; the log ends with base accuracy
#   protocol.sh base2new_test  DATASET SEED [LOAD_EPOCH]  evaluate the base-trained prompts on new classes
#   protocol.sh xd_train       [DATASET] SEED [MAX_EPOCH] train on all classes of DATASET (default imagenet)
#   protocol.sh xd_test        DATASET SEED [LOAD_EPOCH]  evaluate the ImageNet-trained prompts on DATASET
#   protocol.sh dg_test        DATASET SEED [LOAD_EPOCH]  the same, on imagenetv2/imagenet_sketch/imagenet_a/imagenet_r
#   protocol.sh fewshot_train  DATASET SEED [SHOTS]       train and test on all classes with SHOTS shots (default 16)
#   protocol.sh zeroshot       DATASET [SEED] [PARTS]     no training (zero-shot CLIP): evaluate on base and new classes
#   protocol.sh zeroshot_xd    DATASET [SEED]             no training: evaluate on all classes of DATASET (imagenet too)
#   protocol.sh zeroshot_dg    DATASET [SEED]             the same, on imagenetv2/imagenet_sketch/imagenet_a/imagenet_r
#
# Environment: DATA (dataset root, default ./data), OUTPUT (default ./output), CFG / CFG_XD (config names),
# SHOTS (default 16), PYTHON (default python3), NPROC (processes per run, default 1: with N > 1 each run is one
# torchrun job of N processes, one GPU each; see README "Several GPUs"). Extra "KEY VALUE" config pairs can follow the arguments
# after a literal "--", e.g. `... eurosat 1 -- TRAINER.MPL.PREC fp32`. The zeroshot protocols read their
# configs from configs/trainers/$CFG_DIR/ (default CoOp, as the reference's scripts/zsclip).
#
# A run counts as finished only when its folder holds result.json (written atomically at the very end).
# A finished run is skipped; an unfinished one (crashed or killed) is resumed from its last checkpoint (one is
# kept after every epoch), or started again when it saved none -- never taken as done. A folder another run is
# writing to (run.lock) is refused by train.py, naming that run.
set -euo pipefail

: "${TRAINER:?set TRAINER (scripts/method.sh does)}"
: "${CFG_B2N:?set CFG_B2N (scripts/method.sh does)}"
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT_DIR"
DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
SHOTS=${SHOTS:-16}
PYTHON=${PYTHON:-python3}
NPROC=${NPROC:-1}
if ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: NPROC=$NPROC is not a positive number of processes (one per GPU), e.g. NPROC=4" >&2
    exit 2
fi
LAUNCH=("$PYTHON")  # NPROC > 1: one run over NPROC processes on this machine (a free port is picked)
if [ "$NPROC" -gt 1 ]; then LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC"); fi

usage() {
    sed -n '4,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

PROTO=${1:-}; shift || true
ARGS=(); EXTRA=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; EXTRA=("$@"); break; fi
    ARGS+=("$1"); shift
done

is_int() { [[ "${1:-}" =~ ^[0-9]+$ ]]; }

# The small offline demo dataset runs on the project's tiny CLIP, with configs of its own.
pick_cfg() {  # $1: dataset, $2: default config name -> config name
    if [ -n "${CFG:-}" ]; then echo "$CFG"
    elif [ "$1" = digits ] && [ -n "${CFG_DIGITS:-}" ]; then echo "$CFG_DIGITS"
    else echo "$2"; fi
}

check_data() {  # fails with instructions when the dataset is not prepared (scripts/method.sh checked it already)
    [ "${DATA_CHECKED:-}" = "$1" ] && return 0
    "$PYTHON" -m datasets.prepare "$1" --root "$DATA" --check
}

trained_epochs() {  # $1: a finished training run's folder -> the epoch its last checkpoint holds
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["epochs"])' "$1/result.json"
}

newest_log() {  # $1: run folder -> its newest log file (log.txt, or log.txt-<timestamp> of a later attempt)
    ls -t "$1"/log.txt* 2>/dev/null | head -n 1 || true
}

run() {  # $1: output dir; rest: train.py arguments
    local dir=$1; shift
    if [ -f "$dir/result.json" ]; then
        echo "The results exist at $dir (result.json); skip this job. Delete the folder to run it again."
        return 0
    fi
    # (if another run is writing there, train.py stops at once, naming it: see run.lock)
    if compgen -G "$dir/*/checkpoint" >/dev/null; then
        echo "Unfinished run found at $dir: resuming from its last checkpoint."
    elif [ -d "$dir" ]; then
        echo "A run was started at $dir but saved no checkpoint: nothing to resume, starting it again."
    fi
    local rc=0
    "${LAUNCH[@]}" train.py --output-dir "$dir" "$@" || rc=$?
    if [ ! -f "$dir/result.json" ]; then
        local log
        log=$(newest_log "$dir")
        if [ "$rc" -eq 2 ]; then
            echo "error: train.py refused the run in $dir (the error line above says why)" >&2
        elif [ -n "$log" ]; then
            echo "error: the run in $dir ended without result.json (exit status $rc); see $log" >&2
        else
            echo "error: the run in $dir ended without result.json (exit status $rc)" >&2
        fi
        return 1
    fi
}

common_args() {  # $1 dataset, $2 seed, $3 cfg -> sets the array COMMON
    COMMON=(--root "$DATA" --seed "$2" --trainer "$TRAINER"
        --dataset-config-file "configs/datasets/$1.yaml"
        --config-file "configs/trainers/${CFG_DIR:-$TRAINER}/$3.yaml")
}

case "$PROTO" in
base2new_train)
    [ ${#ARGS[@]} -ge 2 ] || usage
    DATASET=${ARGS[0]}; SEED=${ARGS[1]}; EP=${ARGS[2]:-}
    C=$(pick_cfg "$DATASET" "$CFG_B2N")
    check_data "$DATASET"
    common_args "$DATASET" "$SEED" "$C"
    DIR="$OUTPUT/base2new/train_base/$DATASET/shots_$SHOTS/$TRAINER/$C/seed$SEED"
    OPTS=(DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base)
    if is_int "$EP"; then OPTS+=(OPTIM.MAX_EPOCH "$EP"); fi
    run "$DIR" "${COMMON[@]}" "${OPTS[@]}" "${EXTRA[@]}"
    ;;
base2new_test)
    [ ${#ARGS[@]} -ge 2 ] || usage
    DATASET=${ARGS[0]}; SEED=${ARGS[1]}; EP=${ARGS[2]:-}
    C=$(pick_cfg "$DATASET" "$CFG_B2N")
    check_data "$DATASET"
    common_args "$DATASET" "$SEED" "$C"
    TAIL="$DATASET/shots_$SHOTS/$TRAINER/$C/seed$SEED"
    MODEL_DIR="$OUTPUT/base2new/train_base/$TAIL"
    if [ ! -f "$MODEL_DIR/result.json" ]; then
        echo "error: no finished training run at $MODEL_DIR; run base2new_train.sh $DATASET $SEED first" >&2
        exit 1
    fi
    is_int "$EP" || EP=$(trained_epochs "$MODEL_DIR")
    run "$OUTPUT/base2new/test_new/$TAIL" "${COMMON[@]}" \
        --model-dir "$MODEL_DIR" --load-epoch "$EP" --eval-only \
        DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES new "${EXTRA[@]}"
    ;;
xd_train)
    if [ ${#ARGS[@]} -ge 2 ] && ! is_int "${ARGS[0]}"; then
        DATASET=${ARGS[0]}; SEED=${ARGS[1]}; EP=${ARGS[2]:-}
    else
        [ ${#ARGS[@]} -ge 1 ] || usage
        DATASET=imagenet; SEED=${ARGS[0]}; EP=${ARGS[1]:-}
    fi
    C=$(pick_cfg "$DATASET" "${CFG_XD:-$CFG_B2N}")
    check_data "$DATASET"
    common_args "$DATASET" "$SEED" "$C"
    DIR="$OUTPUT/crossdataset/$DATASET/$TRAINER/${C}_${SHOTS}shots/seed$SEED"
    OPTS=(DATASET.NUM_SHOTS "$SHOTS")
    if is_int "$EP"; then OPTS+=(OPTIM.MAX_EPOCH "$EP"); fi
    run "$DIR" "${COMMON[@]}" "${OPTS[@]}" "${EXTRA[@]}"
    ;;
xd_test|dg_test)
    [ ${#ARGS[@]} -ge 2 ] || usage
    DATASET=${ARGS[0]}; SEED=${ARGS[1]}; EP=${ARGS[2]:-}
    SOURCE=${SOURCE:-imagenet}
    if [ "$PROTO" = dg_test ]; then
        case "$DATASET" in imagenetv2|imagenet_sketch|imagenet_a|imagenet_r) ;;
        *) echo "error: domain generalisation targets are imagenetv2, imagenet_sketch, imagenet_a, imagenet_r (got $DATASET)" >&2; exit 2;;
        esac
    fi
    C=$(pick_cfg "$SOURCE" "${CFG_XD:-$CFG_B2N}")
    check_data "$DATASET"
    common_args "$DATASET" "$SEED" "$C"
    MODEL_DIR="$OUTPUT/crossdataset/$SOURCE/$TRAINER/${C}_${SHOTS}shots/seed$SEED"
    if [ ! -f "$MODEL_DIR/result.json" ]; then
        echo "error: no finished training run at $MODEL_DIR; run xd_train.sh $SOURCE $SEED first" >&2
        exit 1
    fi
    is_int "$EP" || EP=$(trained_epochs "$MODEL_DIR")
    run "$OUTPUT/crossdataset/evaluation/$DATASET/$TRAINER/${C}_${SHOTS}shots/seed$SEED" \
        "${COMMON[@]}" --model-dir "$MODEL_DIR" --load-epoch "$EP" --eval-only "${EXTRA[@]}"
    ;;
fewshot_train)
    [ ${#ARGS[@]} -ge 2 ] || usage
    DATASET=${ARGS[0]}; SEED=${ARGS[1]}; K=${ARGS[2]:-$SHOTS}
    C=$(pick_cfg "$DATASET" "${CFG_FS:-$CFG_B2N}")
    check_data "$DATASET"
    common_args "$DATASET" "$SEED" "$C"
    run "$OUTPUT/fewshot/$DATASET/shots_$K/$TRAINER/$C/seed$SEED" "${COMMON[@]}" \
        DATASET.NUM_SHOTS "$K" "${EXTRA[@]}"
    ;;
zeroshot)
    # Zero-shot runs are eval-only runs with no --model-dir, in the folders of the trained methods' tests
    # (test_base/ and test_new/), so the tables pick them up. The method configs are CoOp's (CFG_DIR, as the
    # reference's scripts/zsclip); PARTS: "base new" (default), "base", "new" or "all".
    [ ${#ARGS[@]} -ge 1 ] || usage
    DATASET=${ARGS[0]}; SEED=${ARGS[1]:-1}; PARTS=${ARGS[2]:-base new}
    C=$(pick_cfg "$DATASET" "$CFG_B2N")
    check_data "$DATASET"
    for PART in $PARTS; do
        case "$PART" in base|new|all) ;; *) echo "error: PARTS are base, new or all (got $PART)" >&2; exit 2;; esac
        run "$OUTPUT/base2new/test_$PART/$DATASET/shots_$SHOTS/$TRAINER/$C/seed$SEED" \
            --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
            --dataset-config-file "configs/datasets/$DATASET.yaml" \
            --config-file "configs/trainers/${CFG_DIR:-CoOp}/$C.yaml" --eval-only \
            DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$PART" "${EXTRA[@]}"
    done
    ;;
zeroshot_xd|zeroshot_dg)
    # Written where xd_test/dg_test write; zero-shot ImageNet (the "source" column) is `zeroshot_xd imagenet`.
    [ ${#ARGS[@]} -ge 1 ] || usage
    DATASET=${ARGS[0]}; SEED=${ARGS[1]:-1}
    if [ "$PROTO" = zeroshot_dg ]; then
        case "$DATASET" in imagenetv2|imagenet_sketch|imagenet_a|imagenet_r) ;;
        *) echo "error: domain generalisation targets are imagenetv2, imagenet_sketch, imagenet_a, imagenet_r (got $DATASET)" >&2; exit 2;;
        esac
    fi
    C=$(pick_cfg "$DATASET" "${CFG_XD:-$CFG_B2N}")
    check_data "$DATASET"
    run "$OUTPUT/crossdataset/evaluation/$DATASET/$TRAINER/${C}_${SHOTS}shots/seed$SEED" \
        --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
        --dataset-config-file "configs/datasets/$DATASET.yaml" \
        --config-file "configs/trainers/${CFG_DIR:-CoOp}/$C.yaml" --eval-only "${EXTRA[@]}"
    ;;
*)
    usage
    ;;
esac
