"""The whole test suite, as CI runs it: ``python3 -m pytest`` (every test), then the numerically sensitive tests
(marker ``numeric``: the token operations, the oracles, the equivalences of the exact fast paths, the caches, the
precisions) once more under each other CPU kernel set that PyTorch can choose, so that a tolerance tuned to this
machine's kernels fails here rather than on a user's machine.

    python3 tests/suite.py            # what .ci/run and the README run
    python3 tests/suite.py -x -q      # extra arguments go to the first (whole-suite) pytest run

``ATEN_CPU_CAPABILITY`` picks PyTorch's CPU kernels (``default``: no vector instructions, ``avx2``, ``avx512``); a
capability the CPU lacks falls back to the best it has, so the reruns are harmless anywhere.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

CAPABILITIES = ("default", "avx2")
TESTS = Path(__file__).resolve().parent


def numeric_files():
    """The test files that mark tests ``numeric`` (the marker is only ever applied as ``pytest.mark.numeric``), so
    that the reruns collect those files alone rather than the whole suite."""
    return sorted(str(p) for p in TESTS.glob("test_*.py") if "mark.numeric" in p.read_text())


def pytest(args, env=None):
    return subprocess.call([sys.executable, "-m", "pytest", *args], env=env)


def main(argv) -> int:
    status = pytest(argv)
    if status != 0:
        return status
    for capability in CAPABILITIES:
        start = time.time()
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
        status = pytest(["-m", "numeric", "-q", "-p", "no:cacheprovider", *numeric_files()], env=env)
        print(f"numeric tests under ATEN_CPU_CAPABILITY={capability}: "
              f"{'passed' if status == 0 else 'FAILED'} in {time.time() - start:.0f} s", flush=True)
        if status != 0:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
