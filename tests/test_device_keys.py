"""A device's store belongs to one user, and a deployed device keeps a secret negative key.

Attacks: opening another user's store must fail before anything is written into it
(the file stays byte for byte the same), and the server, which knows the run seed and
the public key, must not be able to replay a deployed device's negatives (a simulated
device's, by design, it can: its run equals the reference loop).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import app as client_app
from clients.device import NEGATIVE_KEY, DeviceClient
from clients.sim_store import device_path, open_device
from clients.store import DeviceStore
from fedrec.errors import StoreError
from fedrec.federated.client import client_fit, derive_seed
from fedrec.models.registry import init_item_arrays
from fedrec.training.negatives import KEY_BYTES
from server.settings import RunSettings, load_split

DATA = "synthetic:users=6,items=40,dim=4,mean=12,seed=3"


def _folder_bytes(folder: Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` (the store and any -wal/-shm beside it)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("owner_has_key", [False, True])
def test_opening_another_users_store_fails_and_leaves_it_byte_identical(
    tmp_path: Path, owner_has_key: bool
) -> None:
    # Prepare: user 3's store, as a simulation makes it (no key) or as a device does
    root = tmp_path / "clients"
    items = np.array([1, 2, 5], dtype=np.int64)
    open_device(root, 3, items, seed=0).close()
    path = device_path(root, 3)
    if owner_has_key:  # its own device opens it: a key is drawn and kept
        DeviceClient.open(path, user_id=3).close()
    before = _folder_bytes(path.parent)
    # Execute: user 4 opens it (the default asks for a secret key, which it lacks)
    with pytest.raises(StoreError, match="belongs to user 3") as caught:
        DeviceClient.open(path, user_id=4)
    # Assert: refused with a clear error, and nothing was written into the file
    assert caught.value.where == str(path) and "own store" in (caught.value.fix or "")
    assert _folder_bytes(path.parent) == before
    with DeviceStore.open(path) as store:
        assert (store.get_meta(NEGATIVE_KEY) is not None) == owner_has_key
        assert store.get_meta("user_id") == 3


def test_another_users_store_of_an_older_schema_is_refused_before_its_migration(
    tmp_path: Path,
) -> None:
    # Prepare: user 3's store as schema 1 wrote it (no privacy ledger table yet)
    path = tmp_path / "device.db"
    with DeviceStore.open(path, target_version=1) as store:
        store.set_meta("user_id", 3)
        store.set_meta("created", 0.0)
        store.add_interactions([(1, None, 0.0), (5, 4.0, 1.0)])
    assert int.from_bytes(path.read_bytes()[60:64], "big") == 1  # PRAGMA user_version
    before = _folder_bytes(tmp_path)
    # Execute: user 4 opens it, as a device would (which migrates a store it may open)
    with pytest.raises(StoreError, match="belongs to user 3") as caught:
        DeviceClient.open(path, user_id=4)
    # Assert: refused before the migration wrote anything: byte for byte the same file,
    # still schema 1, and no lock left behind (its owner opens and migrates it)
    assert caught.value.where == str(path)
    assert _folder_bytes(tmp_path) == before
    with DeviceClient.open(path, user_id=3) as device:
        assert device.client_id == "3"
    with DeviceStore.open(path) as store:
        assert store.version == 2 and len(store.interactions()) == 2


def _train_message(settings: RunSettings, arrays: list[np.ndarray], node: int) -> Message:
    config = ConfigRecord(dict(settings.client_config()))
    config["server-round"] = 1
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": config})
    return Message(content, node, MessageType.TRAIN)


def _context(user: int, store_dir: Path | None) -> Context:
    node_config: dict[str, int | str] = {"partition-id": user, "num-partitions": 6}
    if store_dir is not None:  # what `fedrec deploy-local` gives each SuperNode
        node_config["store-dir"] = str(store_dir)
    return Context(
        run_id=1, node_id=user + 2, node_config=node_config, state=RecordDict(), run_config={}
    )


def test_a_deployed_device_keeps_a_secret_key_the_server_cannot_replay(tmp_path: Path) -> None:
    # Prepare: one MF round without privacy, sent to user 2 as a simulated node (no
    # store folder in its node config) and as a deployed SuperNode (its own folder)
    for name in ("task_id", "run_id", "node_id"):  # as the in-process grid sets them
        setattr(TaskIdentity, name, 1)
    settings = RunSettings.from_run_config(
        {"data": DATA, "model": "mf", "run-dir": str(tmp_path / "run"), "train.epochs": 1}
    )
    split = load_split(settings)
    arrays = init_item_arrays(settings.model, split.n_items, seed=0)
    user, node_dir = 2, tmp_path / "node-2"
    # Execute
    simulated = client_app(_train_message(settings, arrays, 4), _context(user, None))
    deployed = client_app(_train_message(settings, arrays, 4), _context(user, node_dir))
    # Assert: the deployed device drew and kept a 32-byte key; the simulated one has none
    with DeviceStore.open(device_path(node_dir, user)) as store:
        key = store.get_meta(NEGATIVE_KEY)
    assert key is not None and len(bytes.fromhex(key)) == KEY_BYTES
    sim_root = Path(settings.run_dir) / "clients"
    with DeviceStore.open(device_path(sim_root, user)) as store:
        assert store.get_meta(NEGATIVE_KEY) is None
    # Attack: the server knows the run seed, the user's round seed and (say) the item set;
    # with the public key it replays the simulated upload exactly, not the deployed one
    replay = client_fit(
        settings.model,
        settings.train,
        arrays,
        None,
        split.train_items(user),
        seed=derive_seed(settings.seed, user, 0),
    ).item_arrays
    sim_up = simulated.content.array_records["arrays"].to_numpy_ndarrays()
    dep_up = deployed.content.array_records["arrays"].to_numpy_ndarrays()
    np.testing.assert_array_equal(sim_up[0], replay[0])
    assert not np.array_equal(dep_up[0], replay[0])
