"""Output directories that appear complete or not at all.

Design rule: nothing half-written is ever left where a user looks. Files are written
into a hidden temporary sibling of the target, which is renamed into place only when
every file is written; on any failure the temporary directory is removed. Outputs hold
user data (splits, per-user recommendations), so the folder is private: 0700, and every
file in it 0600 (:func:`make_private`), whatever the umask.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedrec.errors import OutputError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private(root: Path) -> None:
    """Restrict ``root`` and everything under it: folders 0700, files 0600 (no symlinks)."""
    os.chmod(root, PRIVATE_DIR)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, PRIVATE_DIR)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, PRIVATE_FILE)


def check_output_dir(
    path: Path, *, fix_not_empty: str = "choose a new directory or remove this one first"
) -> None:
    """Raise :class:`OutputError` unless ``path`` is absent or an empty directory."""
    if path.exists() and not path.is_dir():
        raise OutputError(
            "output path exists and is not a directory", where=str(path), fix="choose another --out"
        )
    if path.is_dir() and any(path.iterdir()):
        raise OutputError("output directory is not empty", where=str(path), fix=fix_not_empty)


@contextmanager
def private_files() -> Iterator[None]:
    """Create every file and folder inside the block private (umask 077: 0600 / 0700).

    The umask is inherited by child processes (Ray's workers) and applies to files that
    libraries create themselves (SQLite's WAL, matplotlib's PNGs).
    """
    before = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(before)


@contextmanager
def atomic_output_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block succeeds.

    Refuses an existing non-empty ``path`` and an unwritable parent with
    :class:`OutputError`; removes the temporary directory if the block raises.
    """
    target = Path(path).expanduser()
    check_output_dir(target)
    if target.parent.exists() and not target.parent.is_dir():
        raise OutputError(
            f"cannot write output directory ({target.parent} is a file, not a directory)",
            where=str(target),
            fix="choose a writable location",
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(6)}"
        tmp.mkdir(mode=PRIVATE_DIR)
    except OSError as err:
        raise OutputError(
            f"cannot write output directory ({err.strerror or err})",
            where=str(target),
            fix="choose a writable location",
        ) from err
    try:
        yield tmp
        make_private(tmp)
        check_output_dir(target)  # it may have appeared while we were writing
        if target.is_dir():
            target.rmdir()
        tmp.rename(target)
    except OSError as err:
        raise OutputError(
            f"cannot write output directory ({err.strerror or err})",
            where=str(target),
            fix="choose a writable location with enough free space",
        ) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
