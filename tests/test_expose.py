"""`weavefast expose` / `hide`: the host reaches containers on other hosts, then not."""
import sys

import pytest

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def tb(testbed_factory):
    with testbed_factory(hosts=2, containers_per_host=1) as tb:
        tb.start_routers()
        yield tb


def weavefast(tb, host, *args):
    return tb.run(host, [sys.executable, "-m", "dataplane", *args], check=False)


def test_expose_lets_the_host_reach_a_container_on_another_host_and_hide_stops_it(tb):
    host1 = tb.hosts[0]
    remote = tb.hosts[1].containers[0]
    assert "Network is unreachable" in tb.ping(host1, remote.ip4, count=1, deadline=2).output

    exposed = weavefast(tb, host1, "expose", "10.32.0.200/24")
    assert exposed.returncode == 0, exposed.stderr
    assert "10.32.0.200/24 on bridge weavefast: exposed" in exposed.stdout
    result = tb.ping(host1, remote.ip4)
    assert result.ok and result.received == 3, result.output
    again = weavefast(tb, host1, "expose", "10.32.0.200/24")
    assert again.returncode == 0 and "already exposed" in again.stdout

    hidden = weavefast(tb, host1, "hide")
    assert hidden.returncode == 0 and "removed 10.32.0.200/24" in hidden.stdout, hidden.stderr
    assert "Network is unreachable" in tb.ping(host1, remote.ip4, count=1, deadline=2).output


@pytest.mark.parametrize("args, message", [
    (("expose", "10.32.0.200"), "has no prefix length"),
    (("expose", "banana/24"), "is not an address in CIDR form"),
    (("expose", "10.32.0.0/24"), "choose a host address"),
    (("hide", "10.32.0.201/24"), "is not exposed on weavefast"),
    (("expose", "--status-addr", "127.0.0.1:1", "10.32.0.200/24"), "start `weavefast router`"),
])
def test_bad_input_gets_one_line_naming_the_fix(tb, args, message):
    result = weavefast(tb, tb.hosts[0], *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
