"""Token authentication for the Ray clusters fedrec starts (Ray >= 2.52, ``RAY_AUTH_MODE``).

Design rule: a Ray cluster started without authentication lets anyone who can reach its
ports run code as the user who started it (Ray's GCS, raylet and driver listen on every
interface, whatever node IP is given), and so read every simulated device store. So
every Ray cluster fedrec starts runs with Ray's token authentication: a random token
(:func:`secrets.token_hex`, 256 bits) created per run in a fresh 0700 folder (file 0600),
handed to Ray through ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` (Ray's own
variables; its processes inherit them), and removed when the run ends. A Ray started
by Flower's own ``flwr-simulation`` process (``flwr run``) gets a per-process token in
its environment instead (:func:`secure_flwr_simulation`). A user who set
``RAY_AUTH_MODE=token`` with a token of their own (a multi-machine cluster) keeps it.

No Ray import at module level: the module only prepares the environment ``ray.init``
reads (the token file is read by Ray's processes when they start).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
_VARS = (MODE_VAR, TOKEN_VAR, TOKEN_PATH_VAR)
TOKEN_FILE = "ray-token"


def user_token_configured() -> bool:
    """True when the environment already turns on token auth with a token of its own."""
    return os.environ.get(MODE_VAR) == "token" and bool(
        os.environ.get(TOKEN_VAR) or os.environ.get(TOKEN_PATH_VAR)
    )


def new_token_file() -> Path:
    """A fresh random token in a new 0700 folder (the file 0600); the caller removes it."""
    folder = Path(tempfile.mkdtemp(prefix="fedrec-ray-auth-"))  # mkdtemp: 0700
    path = folder / TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32))
    return path


def _reset_ray_cache() -> None:
    """Make an imported, not running Ray re-read the auth settings (one process, many runs)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or ray.is_initialized():
        return  # Ray reads the environment when it is first used; a running Ray keeps its
    try:
        import importlib

        raylet = importlib.import_module("ray._raylet")
        raylet.Config.initialize("")  # re-reads RAY_AUTH_MODE
        raylet.AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # a Ray without token auth: nothing cached
        return


@contextmanager
def ray_token_auth() -> Iterator[Path | None]:
    """Turn on token auth for any Ray cluster started inside the block.

    Yields the token file (``None`` when the user configured their own token, which is
    kept); restores the environment and removes the token folder afterwards.
    """
    if user_token_configured():
        yield None
        return
    saved = {name: os.environ.get(name) for name in _VARS}
    path = new_token_file()
    os.environ.pop(TOKEN_VAR, None)
    os.environ[MODE_VAR] = "token"
    os.environ[TOKEN_PATH_VAR] = str(path)
    _reset_ray_cache()
    try:
        yield path
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(path.parent, ignore_errors=True)
        # Ray's cache is not reset here: a Ray still shutting down keeps using the token
        # it read (resetting it made Ray's own GCS calls fail a CHECK and abort)


def enable_for_this_process() -> bool:
    """Token auth for the Ray cluster this process will start, for the process's life.

    For processes that start Ray outside fedrec's control (Flower's ``flwr-simulation``,
    started by ``flwr run``), which may end by ``os._exit`` (Flower's forced exit) and
    so skip any clean-up: the token is kept in the environment only
    (``RAY_AUTH_TOKEN``, inherited by Ray's processes, whose environment only their
    user can read), never written to a file. Returns whether it was turned on.
    """
    if user_token_configured():
        return False
    os.environ.pop(TOKEN_PATH_VAR, None)
    os.environ[MODE_VAR] = "token"
    os.environ[TOKEN_VAR] = secrets.token_hex(32)
    _reset_ray_cache()
    return True


def secure_flwr_simulation() -> bool:
    """In Flower's ``flwr-simulation`` process (``flwr run``), before it starts Ray:
    turn on token auth (:func:`enable_for_this_process`); elsewhere do nothing.

    Flower loads the ClientApp in that process before it calls ``ray.init``
    (``flwr.server.superlink.fleet.vce.vce_api.start_vce``), so the ClientApp's module
    calls this at import.
    """
    import sys

    if not sys.argv or not sys.argv[0].endswith("flwr-simulation"):
        return False
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return False  # too late: this process's Ray already runs
    return enable_for_this_process()


__all__ = [
    "enable_for_this_process",
    "new_token_file",
    "ray_token_auth",
    "secure_flwr_simulation",
    "user_token_configured",
]
