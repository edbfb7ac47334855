"""``fedrec audit`` of federated-EASE runs: item inference on what the server receives.

The same attack (:mod:`fedrec.audit.gram`) reads each upload as a packed Gram
contribution. Central mode is the positive control: the server gets each device's
contribution in the clear, and the attack recovers the items. Distributed mode: the
server gets masked SecAgg+ ring vectors, and no attack may beat the popularity prior
by more than 0.02 AUC; with the masks switched off (the broken-protocol control) the
very same attack on the very same run succeeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.audit.gram import (
    MAX_ABOVE_PRIOR,
    attack_uploads,
    diagonal_scores,
    row_norm_scores,
)
from fedrec.audit.results import AuditOptions
from fedrec.federated.gram import client_contribution, unpack
from fedrec.secagg import protocol
from server.gram_app import resolve, run_gram_server
from server.gram_settings import GramSettings
from server.settings import load_split
from simulations.audit import run_audit
from simulations.commands.simulate import open_gram_run_dir
from simulations.inprocess import InProcessGrid

DATA = "synthetic:users=50,items=40,dim=4,mean=8,seed=5"
CLIENTS = 40


def _run(run_dir: Path, mode: str) -> Path:
    flat: dict[str, Any] = {"data": DATA, "run-dir": str(run_dir), "model": "ease",
                            "privacy": mode, "privacy.target-epsilon": 8.0,
                            "privacy.delta": 1e-4, "secagg.neighbours": 4}  # fmt: skip
    settings = GramSettings.from_flat(flat)
    split = load_split(settings.base)
    settings = resolve(settings, split)
    with open_gram_run_dir(settings, split):  # config.json, as fedrec simulate writes it
        run_gram_server(InProcessGrid(split.n_users), settings)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gram-audit")
    return {mode: _run(root / mode, mode) for mode in ("central", "distributed")}


def _audit(run_dir: Path, name: str) -> dict[str, Any]:
    out = run_dir / name
    payload = run_audit(run_dir, out, clients=CLIENTS, opts=AuditOptions(seed=1))
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
    return payload


def test_the_attack_reads_items_off_a_plain_gram_contribution() -> None:
    # Prepare
    n_items, items = 12, np.array([1, 4, 9])
    packed = client_contribution(items, n_items, normalize=True)
    # Execute
    diag, rows = diagonal_scores(packed, n_items), row_norm_scores(packed, n_items)
    # Assert: both equal the unpacked matrix's diagonal and row norms
    matrix = unpack(packed, n_items)
    assert np.allclose(diag, np.diag(matrix)) and np.allclose(rows, np.linalg.norm(matrix, axis=1))
    assert set(np.flatnonzero(diag)) == {1, 4, 9}


def test_central_uploads_give_the_items_away(runs: dict[str, Path]) -> None:
    # Execute: the positive control, the server of a central run
    payload = _audit(runs["central"], "audit.json")
    # Assert
    auc = payload["gram"]["auc"]
    assert auc["upload_diagonal"] > 0.99 and auc["upload_classifier"] > 0.99
    assert payload["gram"]["best_upload_attack_above_prior"] > 0.2
    assert payload["gram"]["within_prior"] is False and payload["mode"] == "central"
    assert (runs["central"] / "audit_roc.png").is_file()


def test_masked_uploads_reveal_no_more_than_the_popularity_prior(runs: dict[str, Path]) -> None:
    # Execute: the same attack on what the server of a distributed run receives
    payload = _audit(runs["distributed"], "audit.json")
    # Assert
    gram = payload["gram"]
    assert payload["mode"] == "distributed" and gram["transcript"]["survivors"] == CLIENTS
    assert gram["auc"]["popularity_prior"] > 0.55  # the prior is informative here
    assert gram["best_upload_attack_above_prior"] <= MAX_ABOVE_PRIOR
    assert gram["within_prior"] is True
    # every masked upload has the same size, whatever the user's number of items
    assert len(gram["transcript"]["reply_bytes"]["masked"]) == 1


def test_with_masks_switched_off_the_same_attack_succeeds(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a broken protocol that uploads the encoded input without its masks
    original = protocol.Participant.masked_input

    def unmasked(self: protocol.Participant, value: Any, inbox: Any) -> Any:
        masked = original(self, value, inbox)  # keeps the state machine going
        ring = (np.asarray(value).astype(np.uint64)) & np.uint64((1 << self.params.bits) - 1)
        return ring.astype(masked.dtype)

    monkeypatch.setattr(protocol.Participant, "masked_input", unmasked)
    # Execute
    payload = _audit(runs["distributed"], "audit-broken.json")
    # Assert: the audit catches it
    gram = payload["gram"]
    assert gram["best_upload_attack_above_prior"] > 0.1 and gram["within_prior"] is False


def test_a_classifier_on_pure_noise_does_not_beat_the_prior() -> None:
    # Prepare: uploads independent of the items, an informative prior
    rng = np.random.default_rng(0)
    n_items, n_users = 60, 40
    popularity = np.linspace(1.0, 0.0, n_items)
    train = {
        u: np.sort(rng.choice(n_items, 10, replace=False, p=popularity / popularity.sum()))
        for u in range(n_users)
    }
    uploads = {u: rng.normal(size=n_items * (n_items + 1) // 2) for u in range(n_users)}
    # Execute
    attack = attack_uploads(uploads, train, popularity, n_items, seed=0)
    # Assert
    assert attack.auc["popularity_prior"] > 0.6
    assert abs(attack.auc["upload_diagonal"] - 0.5) < 0.1
    assert attack.above_prior() <= MAX_ABOVE_PRIOR
