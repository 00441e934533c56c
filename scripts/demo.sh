#!/usr/bin/env bash
# The offline demo: MPL's base-to-new protocol on Digits (scikit-learn's handwritten digits) with the project's
# tiny CLIP ("tiny-digits", pretrained by pretrain/tiny_digits.py on rendered digits), on the CPU.
#
#   bash scripts/demo.sh [SEED]
#
# Installs the runtime requirements if they are missing, trains MPL on the base classes (0-4), evaluates the
# learned prompts on the new classes (5-9) and prints the table. No network is needed once the requirements are
# installed. A demonstration of the pipeline, not the paper's benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SEED=${1:-1}
export DATA=${DATA:-./data} OUTPUT=${OUTPUT:-./output/demo} PYTHON

if ! "$PYTHON" -c "import torch, torchvision, yaml, yacs, sklearn, ftfy, regex, tabulate, matplotlib" 2>/dev/null; then
    echo "Installing the runtime requirements (requirements.txt) ..."
    "$PYTHON" -m pip install -r requirements.txt
fi

bash scripts/mpl/base2new_train.sh digits "$SEED"
bash scripts/mpl/base2new_test.sh digits "$SEED"
"$PYTHON" -m tools.results "$OUTPUT" --protocol base2new --datasets digits --methods MPL --seeds "$SEED"
