#!/usr/bin/env bash
# The one prepared GPU check (see bench/gpu_check.py): no network, installs nothing, at most 8 minutes on one GPU.
#   bash bench/gpu_check.sh OUTDIR [--budget SECONDS] [--parts NAME ...] [--cpu]
# Writes OUTDIR/report.json, OUTDIR/report.md and OUTDIR/logs/; prints a compact report.
set -u
cd "$(dirname "$0")/.." || exit 2
if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_check.sh OUTDIR [--budget SECONDS] [--parts NAME ...] [--cpu]" >&2
    exit 2
fi
exec python -m bench.gpu_check "$@"
