"""The `impl` fixture: runs a test against the pure-Python reference and the
Cython core, which expose the same API (docs/ARCHITECTURE.md).

Test modules use it with `from impls import impl`.
"""
import importlib

import pytest


@pytest.fixture(params=["reference", "core"])
def impl(request):
    if request.param == "reference":
        return importlib.import_module("dataplane.reference")
    try:
        return importlib.import_module("dataplane._core")
    except ImportError:
        pytest.skip("Cython core not built (pip install -e .)")
