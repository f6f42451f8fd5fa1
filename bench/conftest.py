"""The `impl` fixture for micro-benchmarks: each stage is timed in the pure-Python
reference and in the Cython core, which share one API (docs/ARCHITECTURE.md)."""
import importlib

import pytest


@pytest.fixture(params=["reference", "core"])
def impl(request):
    if request.param == "reference":
        return importlib.import_module("dataplane.reference")
    try:
        return importlib.import_module("dataplane._core")
    except ImportError:
        pytest.skip("Cython core not built (pip install -e . --no-build-isolation)")
