#!/usr/bin/env bash
# The one entry of every method's protocol scripts:
#   bash scripts/method.sh METHOD PROTOCOL ARGS... [-- KEY VALUE ...]
# METHOD: any registered trainer (MPL, maple, KgCoOp, ...; zsclip = ZeroshotCLIP); PROTOCOL: base2new_train,
# base2new_test, xd_train, xd_test, dg_test, fewshot_train (arguments as in scripts/protocol.sh).
# scripts/<method>/<protocol>.sh are this command with METHOD and PROTOCOL taken from the folder and file name:
# every folder there is a link to scripts/_method, so a new method gets its scripts with
# `ln -s _method scripts/<name>` (or none at all: call this file).
# The method's default config names come from its registration (trainers.register_method's scripts; per dataset, and
# for few-shot per number of shots); CFG, CFG_B2N, CFG_XD, CFG_FS and CFG_DIGITS in the environment override them.
# A method that reads an earlier run (its registration's earlier_run, e.g. PromptKD's teacher, made by
# scripts/promptkd_teacher.sh) needs an earlier phase: that script runs first with PROTOCOL ARGS..., makes what is
# missing, and prints shell assignments:
# SETUP_OPTS=(KEY VALUE ...) go first after "--" (so the caller's own pairs still win), exports reach protocol.sh.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
METHOD=$1; PROTOCOL=$2; shift 2
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
DEFAULTS=$(cd "$ROOT_DIR" && "$PYTHON" -m tools.method_defaults "$METHOD" "$PROTOCOL" "${1:-}" "${3:-}") || exit 2
eval "$DEFAULTS"
SETUP_OPTS=()
if [ -n "${METHOD_SETUP:-}" ]; then
    SETUP_OUT=$(bash "$ROOT_DIR/$METHOD_SETUP" "$PROTOCOL" "$@") || exit $?
    eval "$SETUP_OUT"
fi
if [ ${#SETUP_OPTS[@]} -gt 0 ]; then
    ARGS=(); REST=()
    while [ $# -gt 0 ]; do if [ "$1" = "--" ]; then shift; REST=("$@"); break; fi; ARGS+=("$1"); shift; done
    set -- "${ARGS[@]}" -- "${SETUP_OPTS[@]}" "${REST[@]}"
fi
exec bash "$ROOT_DIR/scripts/protocol.sh" "$PROTO" "$@"
