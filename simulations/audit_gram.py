"""``fedrec audit`` of a federated-EASE run: attack what its server receives.

Design rule: as for the other runs (:mod:`simulations.audit`), uploads are
REGENERATED, never replayed (the run directory does not store them): a seeded sample
of users runs the run's own device code through the run's own ``ClientApp``, in
process (:class:`simulations.inprocess.InProcessGrid`), and every reply the server
gets is recorded. Central / ``none`` mode: one plain train message per user (the
dense Gram contribution). Distributed mode: a complete SecAgg+ round
(:func:`server.secagg.secure_sum`) among the audited users with the run's own plan
from ``privacy.json`` (ring, scale, rotation, per-device noise), so the server side
holds what it held in the run: public keys, ciphertexts, masked ring vectors, shares
and a noisy sum. The attacks are :mod:`fedrec.audit.gram`'s. What the server learns
from the sum is the release itself, the popularity prior (the run's released Gram
diagonal, ``checkpoint.npz``); the cohort's sum is not a feature: the run's cohort is
every user, whose sum is that release. Keys, ciphertexts and shares are made before
a device reads its data and do not depend on it; ``audit.json`` lists their sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedrec.audit.gram import MAX_ABOVE_PRIOR, UploadAttack, attack_uploads
from fedrec.audit.results import AttackResult, AuditOptions, item_inference
from fedrec.data.split import Split
from fedrec.errors import DataError
from fedrec.federated.gram import packed_size
from fedrec.privacy.distributed import DistributedPlan, decode
from server.checkpoint import load_checkpoint
from server.gram_settings import GramSettings
from server.settings import load_split, read_flat
from simulations.inprocess import InProcessGrid, RecordingGrid

REGENERATED = (
    "Uploads are REGENERATED, not replayed: each audited user's device runs the run's own "
    "ClientApp in process and every reply the server receives is recorded (distributed: a "
    "complete SecAgg+ round among the audited users with the run's plan from privacy.json "
    "and fresh secret noise and masks). The prior is the run's released Gram diagonal."
)
SEES = {
    "popularity_prior": "the release: the noisy Gram matrix's diagonal (every user alike)",
    "upload_diagonal": "each device's upload, read as a packed Gram contribution",
    "upload_row_norm": "each device's upload, read as a packed Gram contribution",
    "upload_classifier": "upload + release, fitted on half of the audited users' true items",
}
Uploads = dict[int, npt.NDArray[np.floating]]


def _nodes(grid: InProcessGrid, users: list[int]) -> dict[int, int]:
    wanted = set(users)
    return {node: user for node, user in grid.partition.items() if user in wanted}


def plain_uploads(settings: GramSettings, split: Split, users: list[int]) -> Uploads:
    """Central / none: each audited device's reply to the run's train message."""
    from server.strategies import ARRAYS_KEY, CONFIG_KEY

    grid = RecordingGrid(split.n_users)
    user_of = _nodes(grid, users)
    config = ConfigRecord({**settings.client_config(), "server-round": 1})
    msgs = [Message(RecordDict({CONFIG_KEY: config}), n, MessageType.TRAIN) for n in user_of]
    out: Uploads = {}
    for reply in grid.send_and_receive(msgs):
        if reply.has_error():
            raise DataError(f"a regenerated upload failed: {reply.error.reason}", where="audit")
        (upload,) = reply.content.array_records[ARRAYS_KEY].to_numpy_ndarrays()
        out[user_of[reply.metadata.src_node_id]] = upload
    return out


def masked_uploads(
    settings: GramSettings, split: Split, users: list[int], plan: DistributedPlan
) -> tuple[Uploads, npt.NDArray[np.float64], dict[str, Any]]:
    """Distributed: a SecAgg+ round among ``users`` with ``plan``; what the server got.

    Returns each user's masked ring vector decoded with the public plan (what the server
    would read from an unmasked input), the cohort's released sum (decoded), and the
    sizes of every other reply (keys, ciphertexts, shares) per stage.
    """
    from server.gram_app import stream
    from server.gram_secagg import PLAN_KEY
    from server.secagg import secure_sum

    grid = RecordingGrid(split.n_users)
    user_of = _nodes(grid, users)
    config = {**settings.client_config(), "server-round": 1, PLAN_KEY: json.dumps(plan.to_json())}
    result = secure_sum(grid, user_of, config, settings.secagg, length=plan.padded,
                        stream=stream, timeout=settings.base.round_timeout)  # fmt: skip
    uploads: Uploads = {}
    sizes: dict[str, set[int]] = {}
    for reply in grid.replies:
        if reply.has_error() or reply.metadata.message_type != MessageType.TRAIN:
            continue
        user = user_of[reply.metadata.src_node_id]
        if reply.content.array_records:
            (masked,) = reply.content.array_records["arrays"].to_numpy_ndarrays()
            uploads[user] = decode(masked.astype(np.uint64), plan)
            sizes.setdefault("masked", set()).add(int(masked.nbytes))
        for record in reply.content.config_records.values():
            stage = "+".join(sorted(record))
            size = sum(len(v) if isinstance(v, bytes) else 0 for v in record.values())
            size += sum(sum(len(b) for b in v if isinstance(b, bytes)) for v in record.values()
                        if isinstance(v, list))  # fmt: skip
            sizes.setdefault(stage, set()).add(size)
    transcript = {
        "survivors": len(result.survivors),
        "reply_bytes": {k: sorted(v) for k, v in sorted(sizes.items())},
    }
    return uploads, decode(result.total, plan), transcript


def _results(attack: UploadAttack, eps: float | None) -> list[AttackResult]:
    out = []
    for name, per_user in attack.scores.items():
        auc, prec, scores, labels = item_inference(per_user)
        out.append(AttackResult(attack=name, sees=SEES[name], auc=auc, precision_at_k=prec,
                                clients_audited=attack.users[name], epsilon_accounted=eps,
                                scores=scores, labels=labels))  # fmt: skip
    return out


def audit_gram_run(
    run_dir: Path, *, clients: int, opts: AuditOptions, eps_accounted: float | None
) -> tuple[dict[str, Any], list[AttackResult]]:
    """Attack the uploads of a federated-EASE run; the ``audit.json`` payload and results."""
    from simulations.audit import audited_users

    settings = GramSettings.from_flat(read_flat(run_dir))
    split = load_split(settings.base)
    ckpt = load_checkpoint(run_dir)
    if ckpt is None or len(ckpt.item_arrays) < 2:
        raise DataError("run has no released Gram matrix (checkpoint.npz)", where=str(run_dir))
    prior = np.asarray(ckpt.item_arrays[1], dtype=np.float64)
    mode = settings.base.privacy.mode
    users = [int(u) for u in audited_users(split, clients, opts.seed)]
    train = {u: split.train_items(u).astype(np.int64) for u in users}
    transcript: dict[str, Any] | None = None
    if mode == "distributed":
        report = json.loads((run_dir / "privacy.json").read_text(encoding="utf-8"))
        plan = DistributedPlan.from_json(dict(report["distributed"]["plan"]))
        uploads, _, transcript = masked_uploads(settings, split, users, plan)
    else:
        uploads = plain_uploads(settings, split, users)
    if any(u.shape != (packed_size(split.n_items),) for u in uploads.values()):
        raise DataError("a regenerated upload has the wrong shape", where="audit")
    attack = attack_uploads(uploads, train, prior, split.n_items, seed=opts.seed)
    above = attack.above_prior()
    payload: dict[str, Any] = {
        "format": "fedrec-audit",
        "version": 1,
        "run_dir": str(run_dir),
        "mode": mode,
        "model": "ease",
        "delta": settings.base.privacy.delta,
        "rounds_run": 1,
        "clients_audited": len(uploads),
        "options": {"seed": opts.seed},
        "regenerated": REGENERATED,
        "gram": {
            "auc": attack.auc,
            "scored_users": attack.users,
            "best_upload_attack_above_prior": above,
            "max_above_prior": MAX_ABOVE_PRIOR,
            # distributed: no attack on what the server holds may beat the prior by more
            "within_prior": bool(above <= MAX_ABOVE_PRIOR),
            "transcript": transcript,
        },
    }
    results = _results(attack, eps_accounted)
    payload["attacks"] = [r.to_json() for r in results]
    return payload, results


__all__ = ["REGENERATED", "audit_gram_run", "masked_uploads", "plain_uploads"]
