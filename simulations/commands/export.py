"""``fedrec export RUN_DIR --out MODEL``: the run's global model as one file a device loads.

The file is :mod:`fedrec.modelfile`'s format: safetensors (never pickle) with a JSON
header, versioned and checksummed. It holds the item-side arrays, the original item ids,
the model configuration, the cold-start fallback the run's privacy mode allows, public
titles and genres where the data have them, and the run's privacy statement. It holds
no interaction, no user id and no user-side parameter. A device loads it with
``DeviceClient.load_model(MODEL)`` (docs/DEVICE.md).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from fedrec.errors import OutputError

NAME = "export"
HELP = "write a run's global model as one versioned file a device can load"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    parser.add_argument("--out", required=True, type=Path, metavar="MODEL", help="file to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing MODEL file")


def run(args: argparse.Namespace) -> int:
    from fedrec.modelfile import save_model
    from simulations.run_model import load_run_model

    out: Path = args.out
    if out.is_dir():
        raise OutputError(
            "is a directory", where=str(out), fix="pass a file name, e.g. model.fedrec"
        )
    if out.exists() and not args.force:
        raise OutputError("exists", where=str(out), fix="pass --force to overwrite it")
    model = load_run_model(args.run_dir)
    path = save_model(out, model.exported)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(
        f"wrote {path}: {model.exported.kind}, {model.n_items} items, "
        f"privacy {model.exported.privacy.get('mode', 'none')}, sha256 {digest[:16]}"
    )
    return 0
