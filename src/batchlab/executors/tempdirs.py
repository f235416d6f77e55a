"""multiprocessing's temp folders (`pymp-XXXX` in the temp dir) left by pool drivers that were
killed before they could remove them, removed by the next pool driver.

A pool driver's folder holds the socket through which its workers fetch the dataset's
shared-memory file descriptors (multiprocessing's resource sharer); multiprocessing removes it
at a normal exit, never after `kill -9`. A folder is removed only when its owner is certainly
gone: it carries our mark (this host, pid and process start time, written when the pool starts)
of a process that no longer exists; or, unmarked (a driver of an older batchlab, another
program), it is ours (same uid) and holds only sockets, none of which any live process is
listening on (Linux's /proc/net/unix; a listener that closes normally deletes its socket).
"""

from __future__ import annotations

import multiprocessing.util
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

from batchlab.store import owner_alive, process_owner

MARK = "batchlab-owner"
"""The file in a pool driver's folder naming its process (`store.process_owner`)."""


def mark_own() -> Path:
    """Create (if not yet) this process's multiprocessing temp folder and mark it as ours."""
    folder = Path(multiprocessing.util.get_temp_dir())
    (folder / MARK).write_text(process_owner(), encoding="utf-8")
    return folder


def _listening_paths() -> set[str] | None:
    """The paths of the Unix sockets bound by live processes; None where it cannot be read."""
    try:
        lines = Path("/proc/net/unix").read_text(encoding="utf-8").splitlines()[1:]
    except OSError:
        return None
    return {parts[7] for line in lines if len(parts := line.split()) >= 8}


def _owner_gone(folder: Path, listening: set[str] | None) -> bool:
    mark = folder / MARK
    try:
        owner = mark.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        owner = None
    if owner is not None:  # ours: on this host, gone when its pid and start time are
        host = owner.partition("/")[0]
        return host == socket.gethostname() and not owner_alive(owner, None, lease_s=0)
    if listening is None:
        return False
    entries = list(folder.iterdir())
    sockets = [p for p in entries if stat.S_ISSOCK(p.lstat().st_mode)]
    return (
        bool(entries)
        and len(sockets) == len(entries)
        and not ({str(p) for p in sockets} & listening)
    )


def remove_stale(root: Path | None = None) -> list[Path]:
    """Remove the `pymp-*` folders under `root` (default: the temp dir) whose owner is gone;
    return them. Folders of other users and anything unreadable are left alone."""
    root = Path(tempfile.gettempdir()) if root is None else root
    listening = _listening_paths()
    removed = []
    for folder in sorted(root.glob("pymp-*")):
        try:
            info = folder.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            if not _owner_gone(folder, listening):
                continue
        except OSError:  # removed meanwhile, or not ours to read
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
