#!/usr/bin/env bash
# Run the test suite, including the smoke Run All (tests/test_notebook_smoke.py), under Colab's library
# versions (constraints/colab.txt).
#
# Usage (from anywhere; about 10 minutes, mostly the pip install and the smoke Run All):
#     bash tools/colab_stack.sh [extra pytest arguments]
#
# Steps: create a Python 3.11 virtualenv, or reuse an existing one (A5_COLAB_VENV, default .venv-colab in
# the repository, git-ignored). Install torch==2.13.0 first, so no other torch build is pulled in. Then
# run `pip install -r requirements.txt -c constraints/colab.txt`, register the venv's python3 kernel,
# print the installed versions, and run `python -m pytest`. The exit code is pytest's.
# Colab itself runs Python 3.13 with torch 2.11 (CUDA). The header of constraints/colab.txt says why
# this run differs.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${A5_COLAB_VENV:-.venv-colab}"
PY="${A5_COLAB_PYTHON:-python3.11}"

echo "==> virtualenv in $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip

echo "==> pip install torch==2.13.0 (first, so requirements.txt pulls in no other build)"
pip install --quiet torch==2.13.0

echo "==> pip install -r requirements.txt -c constraints/colab.txt"
pip install --quiet -r requirements.txt -c constraints/colab.txt

echo "==> register the python3 kernel in the virtualenv"
python -m ipykernel install --sys-prefix --name python3

echo "==> installed versions"
python - <<'EOF'
import sys
from importlib.metadata import version

from jupyter_client.kernelspec import KernelSpecManager

print(f"python {sys.version.split()[0]}")
pins = [line.split("==")[0] for line in open("constraints/colab.txt") if "==" in line and not line.startswith("#")]
for name in ["torch", *pins, "numpy", "sacrebleu"]:
    print(f"{name} {version(name)}")
print("kernel python3 runs", KernelSpecManager().get_kernel_spec("python3").argv[0])
EOF

echo "==> tests (full suite, including the smoke Run All)"
set +e
python -m pytest "$@"
rc=$?
echo "==> pytest exit code $rc"
exit "$rc"
