"""Ray started by batchlab listens on the loopback interface only; an unreachable `--address`
is a one-line error within a bounded time, and nothing is written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchlab.cli import main
from batchlab.executors.ray_pool import RAY_CONNECT_TIMEOUT_S
from tests.test_multiprocess import write_study


def test_an_unreachable_address_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray")
    spec = write_study(tmp_path / "s.toml")
    store = tmp_path / "r.db"
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                *("run", str(spec), "--executor", "ray", "--address", "127.0.0.1:1"),
                *("--store", str(store), "--quiet"),
            ]
        )
    assert exit_.value.code == 2
    assert time.monotonic() - started < RAY_CONNECT_TIMEOUT_S + 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'127.0.0.1:1'" in err and "ray start" in err, err
    assert not store.exists()


LISTENERS = """
import psutil, ray
from batchlab.executors.ray_pool import _init_local
_init_local(ray)
import time; time.sleep(2)  # let every server bind
ips = set()
for p in psutil.Process().children(recursive=True):
    try:
        ips |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == "LISTEN"}
    except psutil.Error:
        pass
import json; print(json.dumps(sorted(ips)))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_local_ray_instance_listens_on_loopback_only(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    out = subprocess.run(
        [sys.executable, "-c", LISTENERS],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ips = json.loads(out.stdout.strip().splitlines()[-1])
    assert ips, "no listening socket found"
    assert all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for ip in ips), ips
