"""Download a public MovieLens archive from GroupLens, verified by SHA-256.

Design rule: nothing is extracted before the archive's checksum matches, and the data
set folder appears complete or not at all: the archive streams to a temporary file, is
verified, is extracted into a temporary folder beside the target, and that folder is
renamed into place. Nothing downloads unless a user asks (``fedrec download``).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fedrec.errors import ConfigError, DataError, OutputError

BASE_URL = "https://files.grouplens.org/datasets/movielens"


@dataclass(frozen=True)
class Archive:
    url: str
    sha256: str


# SHA-256 of the GroupLens archives as recorded by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/movielens.txt). Left out, because no recorded
# SHA-256 was found: ml-10m, ml-32m, and ml-latest (which GroupLens regenerates).
# ml-latest-small may be regenerated too; a mismatch then fails safely.
ARCHIVES: dict[str, Archive] = {
    "ml-100k": Archive(
        f"{BASE_URL}/ml-100k.zip",
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    ),
    "ml-1m": Archive(
        f"{BASE_URL}/ml-1m.zip",
        "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    ),
    "ml-20m": Archive(
        f"{BASE_URL}/ml-20m.zip",
        "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
    ),
    "ml-25m": Archive(
        f"{BASE_URL}/ml-25m.zip",
        "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
    ),
    "ml-latest-small": Archive(
        f"{BASE_URL}/ml-latest-small.zip",
        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    ),
}
_CHUNK = 1 << 20


def download(name: str, data_dir: str | Path | None = None) -> Path:
    """Download and unpack MovieLens ``name`` into ``data_dir/name``; return that folder.

    An existing non-empty ``data_dir/name`` is returned as it is (no network access).
    """
    from fedrec.data.resolve import KNOWN_DATASETS, default_data_dir  # loaders: pandas

    if name in KNOWN_DATASETS and name not in ARCHIVES:
        raise ConfigError(
            f"no verified checksum is known for {name}, so fedrec will not download it",
            where="download",
            fix=f"download {BASE_URL}/{name}.zip yourself and unzip it into "
            f"{Path(data_dir or default_data_dir()) / name}",
        )
    if name not in ARCHIVES:
        raise ConfigError(
            f"unknown data set {name!r}",
            where="download",
            fix=f"choose one of {', '.join(ARCHIVES)}",
        )
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    target = root / name
    if target.is_dir() and any(target.iterdir()):
        return target
    archive = ARCHIVES[name]
    return fetch_archive(archive.url, archive.sha256, target)


def fetch_archive(url: str, sha256: str, target: Path) -> Path:
    """Fetch the zip at ``url``, check its SHA-256, and unpack it as folder ``target``."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.download-", dir=target.parent))
    except OSError as err:
        raise OutputError(
            f"cannot write ({err.strerror or err})",
            where=str(target.parent),
            fix="choose a writable --data-dir or FEDREC_DATA_DIR",
        ) from err
    try:
        zip_path = work / "archive.zip"
        digest = _stream(url, zip_path)
        if digest != sha256:
            raise DataError(
                f"checksum mismatch for {url} (expected sha256 {sha256}, got {digest})",
                where=str(target),
                fix="retry the download; if it persists the archive has changed upstream",
            )
        _extract(zip_path, work / "unpacked", target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stream(url: str, dest: Path) -> str:
    """Copy ``url`` to ``dest`` and return the SHA-256 hex digest of the bytes."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as err:
        raise DataError(
            f"could not download ({getattr(err, 'reason', err)})",
            where=url,
            fix="check the network connection, or download and unzip the archive "
            "into the data directory yourself",
        ) from err
    return digest.hexdigest()


def _extract(zip_path: Path, unpacked: Path, target: Path) -> None:
    """Unpack into ``unpacked``; its single top folder (or itself) becomes ``target``."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for member in zf.namelist():
                resolved = (unpacked / member).resolve()
                if not resolved.is_relative_to(unpacked.resolve()):
                    raise DataError(f"unsafe path {member!r} in archive", where=str(zip_path))
            zf.extractall(unpacked)
    except zipfile.BadZipFile as err:
        raise DataError("not a zip archive", where=str(zip_path), fix="retry") from err
    entries = list(unpacked.iterdir())
    source = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    source.rename(target)
