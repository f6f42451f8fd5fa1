"""Micro-benchmarks time each stage in the pure-Python reference and in the
Cython core through the tests' `impl` fixture (tests/impls.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from impls import impl  # noqa: E402,F401  (a fixture, used by name)
