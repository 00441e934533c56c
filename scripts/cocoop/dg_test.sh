#!/usr/bin/env bash
# CoCoOp, protocol dg_test: bash scripts/cocoop/dg_test.sh DATASET SEED [LOAD_EPOCH] [-- KEY VALUE ...]
# See scripts/protocol.sh for the environment variables (DATA, OUTPUT, CFG, SHOTS) and the output folders.
export TRAINER=CoCoOp CFG_B2N=${CFG_B2N:-vit_b16_c4_ep10_batch1_ctxv1} CFG_XD=${CFG_XD:-vit_b16_c4_ep10_batch1_ctxv1} CFG_DIGITS=${CFG_DIGITS:-tiny_digits}
exec bash "$(dirname "$0")/../protocol.sh" dg_test "$@"
