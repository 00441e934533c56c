#!/usr/bin/env bash
# VPT, protocol xd_test: bash scripts/vpt/xd_test.sh DATASET SEED [LOAD_EPOCH] [-- KEY VALUE ...]
# See scripts/protocol.sh for the environment variables (DATA, OUTPUT, CFG, SHOTS) and the output folders.
export TRAINER=VPT CFG_B2N=${CFG_B2N:-vit_b16_c2_ep5_batch4_4} CFG_XD=${CFG_XD:-vit_b16_c2_ep5_batch4_4} CFG_DIGITS=${CFG_DIGITS:-tiny_digits}
exec bash "$(dirname "$0")/../protocol.sh" xd_test "$@"
