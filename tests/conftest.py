"""Fixtures for tests that build hosts and containers in network namespaces.

`testbed_factory` (session scope) returns a context manager that builds a
`dataplane.testbed.Testbed` with a name prefix unique to this run ("wfi<pid>n<k>"),
and on exit tears it down and fails if any namespace, interface or process with
that prefix is left. Module-scoped testbeds are written as:

    @pytest.fixture(scope="module")
    def tb(testbed_factory):
        with testbed_factory(hosts=2, containers_per_host=1) as tb:
            tb.start_routers()
            yield tb

When a test fails, the output of every process of the testbeds alive at that
moment (the routers' logs) is attached to the report.
"""
import contextlib

import pytest

from dataplane import testbed

pytest_plugins = ["pytester"]

PREFIX_BASE = "wfi"
_live_testbeds = []


@pytest.fixture(scope="session")
def testbed_factory():
    reason = testbed.netns_available()
    if reason:
        pytest.skip(reason)
    testbed.remove_leftovers(PREFIX_BASE)  # from earlier runs that were killed

    @contextlib.contextmanager
    def open_testbed(**kwargs):
        tb = testbed.Testbed(prefix=testbed.unique_prefix(PREFIX_BASE), **kwargs)
        _live_testbeds.append(tb)
        try:
            yield tb
        finally:
            _live_testbeds.remove(tb)
            tb.close()
            left = tb.leftovers()
            assert not any(left.values()), f"testbed {tb.prefix} left behind {left}"

    return open_testbed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for tb in _live_testbeds:
            for name, output in tb.logs().items():
                report.sections.append((f"output of {name}", output[-6000:] or "(nothing)"))
