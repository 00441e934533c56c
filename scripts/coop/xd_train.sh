#!/usr/bin/env bash
# CoOp, protocol xd_train: bash scripts/coop/xd_train.sh [DATASET] SEED [MAX_EPOCH] [-- KEY VALUE ...]
# See scripts/protocol.sh for the environment variables (DATA, OUTPUT, CFG, SHOTS) and the output folders.
export TRAINER=CoOp CFG_B2N=${CFG_B2N:-vit_b16_ctxv1} CFG_XD=${CFG_XD:-vit_b16_ep50_ctxv1} CFG_FS=${CFG_FS:-vit_b16} CFG_DIGITS=${CFG_DIGITS:-tiny_digits}
exec bash "$(dirname "$0")/../protocol.sh" xd_train "$@"
