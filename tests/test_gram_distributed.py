"""--model ease --privacy distributed through Flower: the server's view, dropouts, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedrec.errors import ConfigError
from fedrec.privacy.distributed import epsilon_from_record
from fedrec.privacy.report import verify_privacy_json
from fedrec.secagg.protocol import SecAggAbort
from server.gram_app import run_gram_server, stream
from server.gram_secagg import plan_for
from server.gram_settings import GramSettings
from server.secagg import secure_sum
from server.settings import load_split
from simulations.cli import main
from simulations.inprocess import InProcessGrid, RecordingGrid

DATA = "synthetic:users=30,items=24,dim=4,mean=8,seed=2"
REPLY_KEYS = {"enc-pk", "mask-pk", "ids", "ciphertexts", "kinds", "shares"}


def _settings(tmp_path: Path, **extra: object) -> GramSettings:
    flat = {"data": DATA, "run-dir": str(tmp_path), "model": "ease", "privacy": "distributed",
            "privacy.target-epsilon": 8.0, "privacy.delta": 1e-4, "secagg.neighbours": 8,
            "secagg.min-survivors": 0.9, **extra}  # fmt: skip
    return GramSettings.from_flat(flat)


def test_the_server_receives_only_masked_uploads_and_releases_with_dropouts(
    tmp_path: Path,
) -> None:
    # Prepare: 3 of 30 devices (10%) go offline after sharing keys
    settings = _settings(tmp_path, **{"secagg.drop-users": "4,11,20"})
    split = load_split(settings.base)
    grid = RecordingGrid(split.n_users)
    # Execute
    run_gram_server(grid, settings)
    # Assert: every array the server got is a masked ring vector, never a float upload
    train = [m for m in grid.replies if m.metadata.message_type == MessageType.TRAIN]
    errors = [m for m in train if m.has_error()]
    train = [m for m in train if not m.has_error()]
    masked = [m for m in train if m.content.array_records]
    assert len(masked) == 27 and len(errors) == 3
    report = json.loads((tmp_path / "privacy.json").read_text())
    padded = report["distributed"]["plan"]["padded"]
    for reply in train:
        assert not reply.content.metric_records
        for record in reply.content.config_records.values():
            assert set(record) <= REPLY_KEYS
    for reply in masked:
        (upload,) = reply.content.array_records["arrays"].to_numpy_ndarrays()
        assert upload.dtype == np.uint32 and upload.shape == (padded,)
        assert int(upload.max()) < 2**20 and len(np.unique(upload)) > 0.9 * padded
    # the release: survivors' epsilon, recomputable; the dropped users named
    assert report["mode"] == "distributed" and report["distributed"]["survivors"] == 27
    assert report["epsilon"] <= 8.0 and verify_privacy_json(tmp_path / "privacy.json") == []
    assert epsilon_from_record(report["distributed"]) == pytest.approx(report["epsilon"])
    rounds = (tmp_path / "rounds.jsonl").read_text().splitlines()
    record = json.loads(rounds[0])
    assert record["failed"] == 3 and record["participants"] == 27  # counts only, no ids
    assert (tmp_path / "checkpoint.npz").exists()


def test_too_few_survivors_release_nothing(tmp_path: Path) -> None:
    # Prepare: 4 of 30 drop, the noise is calibrated for 27
    settings = _settings(tmp_path, **{"secagg.drop-users": "1,2,3,4"})
    grid = RecordingGrid(load_split(settings.base).n_users)
    # Execute / Assert: refused before unmasking (no share ever reaches the server)
    with pytest.raises(ConfigError, match="nothing is released"):
        run_gram_server(grid, settings)
    assert not (tmp_path / "privacy.json").exists() and not (tmp_path / "checkpoint.npz").exists()
    assert not any("shares" in r for m in grid.replies if m.has_content()
                   for r in m.content.config_records.values())  # fmt: skip


def test_devices_refuse_to_unmask_below_the_calibrated_survivors(tmp_path: Path) -> None:
    # Prepare: a server that skips its own survivors check; devices still hold the line
    settings = _settings(tmp_path, **{"secagg.drop-users": "1,2,3,4"})
    split = load_split(settings.base)
    grid = InProcessGrid(split.n_users)
    user_of = {node: grid.partition[node] for node in grid.get_node_ids()}
    plan = plan_for(settings.secagg, split.n_items, len(user_of), 8.0, 1e-4)
    config = {**settings.client_config(), "server-round": 1,
              "secagg.plan": json.dumps(plan.to_json()),
              "secagg.min-survivors-count": plan.min_survivors,
              "secagg.drop-users": "1,2,3,4"}  # fmt: skip
    # Execute / Assert: no device sends shares, so no secret can be rebuilt
    with pytest.raises(SecAggAbort, match="nothing is released"):
        secure_sum(grid, user_of, config, settings.secagg, length=plan.padded, stream=stream,
                   timeout=30.0)  # fmt: skip


def test_a_device_refuses_a_plain_upload_request_in_distributed_mode(tmp_path: Path) -> None:
    # Prepare: a (dishonest) server asks for the unmasked Gram contribution
    settings = _settings(tmp_path)
    grid = InProcessGrid(load_split(settings.base).n_users)
    node = next(iter(grid.get_node_ids()))
    config = ConfigRecord({**settings.client_config(), "server-round": 1})
    msg = Message(RecordDict({"config": config}), node, MessageType.TRAIN)
    # Execute
    (reply,) = grid.send_and_receive([msg])
    # Assert
    assert reply.has_error() and "masked SecAgg+ inputs" in (reply.error.reason or "")


def test_cli_refuses_distributed_dp_for_other_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    argv = ["simulate", "--model", "mf", "--engine", "inprocess", "--data", DATA, "--privacy",
            "distributed", "--target-epsilon", "8", "--out", str(tmp_path / "r")]  # fmt: skip
    # Execute
    code = main(argv)
    # Assert
    assert code == 2 and "--model ease only" in capsys.readouterr().err
