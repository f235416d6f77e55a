"""A killed pool driver's multiprocessing temp folder (`pymp-*`) is removed by the next pool
driver; folders of live processes, and folders whose owner cannot be told gone, stay."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from multiprocessing.connection import Listener
from pathlib import Path

import pytest

from batchlab.data import load_dataset
from batchlab.executors import tempdirs
from batchlab.executors.local import LocalPool
from batchlab.store import process_owner

# A pool driver with one worker, to which it has sent the dataset (the worker fetches the
# tensors' file descriptors through the driver's socket in its pymp folder); then it waits.
DRIVER = """
import multiprocessing.util, time
from batchlab.data import load_dataset
from batchlab.executors.local import LocalPool
data = load_dataset("synthetic", args={"n_train": 64, "n_test": 16})
pool = LocalPool(data, "cpu", workers=1, budget=None)
worker = pool._start()
print(multiprocessing.util.get_temp_dir(), worker.process.pid, flush=True)
time.sleep(600)
"""


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(mode=0o700)
    return folder


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="pids and /proc/net/unix: Linux")
def test_a_kill_9d_drivers_folder_goes_at_the_next_pool_and_live_ones_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        folder_text, worker_pid = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    os.kill(int(worker_pid), signal.SIGKILL)
    killed = Path(folder_text)
    assert killed.parent == tmp_path
    names = {p.name for p in killed.iterdir()}
    assert tempdirs.MARK in names and any(n.startswith("listener-") for n in names), names

    live = _folder(tmp_path, "pymp-live")  # marked by this (live) process
    (live / tempdirs.MARK).write_text(process_owner(), encoding="utf-8")
    listening = _folder(tmp_path, "pymp-listening")  # unmarked, a live listener in it
    listener = Listener(str(listening / "listener-x"), family="AF_UNIX")
    dead_socket = _folder(tmp_path, "pymp-dead-socket")  # unmarked, a socket nobody holds
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead_socket / "listener-y"))
    empty = _folder(tmp_path, "pymp-empty")  # unmarked, nothing to tell: left alone
    other = _folder(tmp_path, "not-pymp")
    (other / tempdirs.MARK).write_text("somehost/1/1", encoding="utf-8")

    # the next run's pool cleans up on start (here the temp dir is tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    try:
        LocalPool(
            load_dataset("synthetic", args={"n_train": 64, "n_test": 16}),
            "cpu",
            workers=1,
            budget=None,
        ).close()
        assert not killed.exists() and not dead_socket.exists()
        assert live.is_dir() and listening.is_dir() and empty.is_dir() and other.is_dir()
        assert tempdirs.remove_stale(tmp_path) == []  # nothing else to remove
    finally:
        listener.close()
    assert tempdirs.remove_stale(tmp_path) == []  # a closed listener deletes its socket
