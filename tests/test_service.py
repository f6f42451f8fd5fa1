"""`weavefast install-service`: the systemd units shipped, as installed, pass systemd's
own checker, and bad options are refused before anything is written."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER_UNIT = Path("/lib/systemd/system/docker.service")


def install_service(*args):
    return subprocess.run([sys.executable, "-m", "dataplane", "install-service", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="needs systemd-analyze (apt-get install systemd)")
def test_installed_units_pass_systemd_analyze_verify(tmp_path):
    result = install_service("--root", str(tmp_path), "--peer", "192.0.2.11")
    assert result.returncode == 0, result.stderr
    units = tmp_path / "etc/systemd/system"
    assert (tmp_path / "etc/default/weavefast").read_text().splitlines()[-1] == \
        'WEAVEFAST_ARGS="--peer 192.0.2.11"'
    service = (units / "weavefast.service").read_text()
    assert f"ExecStart={sys.executable} -m dataplane router --plugin $WEAVEFAST_ARGS" in service
    assert "Before=docker.service" in service and "Restart=on-failure" in service
    # docker.service with our drop-in beside it, as systemd will read them
    if DOCKER_UNIT.exists():
        shutil.copy(DOCKER_UNIT, units)
    else:
        (units / "docker.service").write_text("[Service]\nExecStart=/bin/true\n")

    verify = subprocess.run(["systemd-analyze", "verify", "weavefast.service", "docker.service"],
                            cwd=units, capture_output=True, text=True, timeout=60)

    assert verify.returncode == 0, verify.stderr
    # it reports unknown keys, bad values and missing programs on stderr, yet exits 0
    ours = [line for line in verify.stderr.splitlines() if "weavefast" in line]
    assert ours == [], verify.stderr


@pytest.mark.parametrize("args, message", [
    (("--name", "my host"), "options of the service cannot hold white space"),
    (("--pear", "192.0.2.11"), "unrecognized arguments: --pear"),
])
def test_bad_options_are_refused_and_nothing_is_written(tmp_path, args, message):
    result = install_service("--root", str(tmp_path), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
