"""A deployment's watchdog: when ``fedrec deploy-local`` dies, end what it started.

``fedrec deploy-local`` stops its processes itself on success, errors, Ctrl-C, SIGTERM
and SIGHUP. Nothing in a process survives SIGKILL, though, and Flower starts its
SuperExecs and apps in sessions of their own, which no process-group signal reaches.
So every deployment starts this script first, in its own session, as
``python -I deploy_watchdog.py MARKER PARENT_PID PARENT_START RECORD FOLDER...`` with its
stdin a pipe from the deployment. It waits until the deployment writes ``done`` and
closes the pipe (a normal end: it exits and touches nothing), or the pipe closes
without ``done``, or the deployment's process (pid and start time) is gone. Then it:

1. finds every process whose environment holds ``MARKER`` (``FEDREC_DEPLOYMENT=<random
   token>``, inherited by everything the deployment started, in whatever session), and
   every process listed in ``RECORD`` (``pid start`` lines the deployment writes as it
   sees new descendants) whose start time still matches, so a reused pid is never hit;
2. sends them SIGTERM, waits up to 3 s (looking again for new ones), then SIGKILL;
3. removes each ``FOLDER`` (the deployment's temporary folder: app copy, Flower homes,
   credentials).

Standard library only, and run with ``-I``, so that it starts in a fraction of a second
and nothing on the path can change what it does.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import time
from pathlib import Path

POLL = 0.2
GRACE = 3.0
DONE = b"done"


def proc_info(pid: int) -> tuple[int, int, str] | None:
    """``(parent pid, start time in clock ticks, state)`` of ``pid``, None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0]


def running(pid: int, start: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` (zombies: no)."""
    info = proc_info(pid)
    return info is not None and info[1] == start and info[2] != "Z"


def has_env(pid: int, marker: bytes) -> bool:
    """Whether ``marker`` (``NAME=value``) is in the environment of ``pid``."""
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def marked(marker: bytes, record: Path | None = None) -> dict[int, int]:
    """Live processes carrying ``marker``, or listed in ``record``: ``{pid: start}``."""
    found: dict[int, int] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != me and has_env(int(entry.name), marker):
            info = proc_info(int(entry.name))
            if info is not None and info[2] != "Z":
                found[int(entry.name)] = info[1]
    if record is not None:
        try:
            lines = record.read_text().split("\n")
        except OSError:
            lines = []
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                pid, start = int(parts[0]), int(parts[1])
                if pid != me and running(pid, start):
                    found[pid] = start
    return found


def end_all(marker: bytes, record: Path | None, grace: float = GRACE) -> int:
    """SIGTERM every marked process, SIGKILL what is left after ``grace`` s; the count."""
    seen: dict[int, int] = {}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        deadline = time.monotonic() + wait
        signalled: set[int] = set()
        while True:
            live = {p: s for p, s in marked(marker, record).items() if running(p, s)}
            seen.update(live)
            for pid in set(live) - signalled:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                signalled.add(pid)
            if not live or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    return len(seen)


def parent_gone(pid: int, start: int) -> bool:
    """Whether the watched process has exited (or this watchdog was reparented)."""
    return os.getppid() != pid or not running(pid, start)


def watch(marker: bytes, pid: int, start: int, record: Path, folders: list[Path]) -> int:
    """Wait for the deployment's end; clean up unless it said ``done``. Exit status."""
    received = b""
    fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], POLL)
        if ready:
            chunk = os.read(fd, 64)
            received += chunk
            if not chunk:  # the pipe closed: a normal end says "done" first
                if received.strip() == DONE:
                    return 0
                break
        elif parent_gone(pid, start):
            break
    print(f"deploy-watchdog: deployment process {pid} is gone; stopping what it started")
    ended = end_all(marker, record)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"deploy-watchdog: ended {ended} processes, removed {len(folders)} folders")
    return 0


def main(argv: list[str]) -> int:
    """``MARKER PARENT_PID PARENT_START RECORD FOLDER...``."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal must not stop it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # nor Ctrl-C meant for the deployment
    marker, pid, start, record, *folders = argv
    return watch(marker.encode(), int(pid), int(start), Path(record), [Path(f) for f in folders])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
