#!/usr/bin/env bash
# MPL, protocol dg_test: bash scripts/mpl/dg_test.sh DATASET SEED [LOAD_EPOCH] [-- KEY VALUE ...]
# See scripts/protocol.sh for the environment variables (DATA, OUTPUT, CFG, SHOTS) and the output folders.
export TRAINER=MPL CFG_B2N=${CFG_B2N:-vit_b4_c1_add2_rm1} CFG_XD=${CFG_XD:-vit_b4_c1_add2_rm1_cross_datasets} CFG_DIGITS=${CFG_DIGITS:-tiny_digits}
exec bash "$(dirname "$0")/../protocol.sh" dg_test "$@"
