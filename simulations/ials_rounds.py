"""Federated iALS rounds batched over the cohort: the measuring tool of the shaped defaults.

``fedrec simulate --model ials`` runs every device through its ClientApp and its store
(about 1.2 CPU s a round of 100 devices on the shared box, most of it opening the stores);
this runs the same rounds in one loop, non-private, for the preset's one SGD epoch: the
cohorts of :func:`fedrec.federated.aggregation.sample_clients` over the users with train
items, the items of :func:`fedrec.models.registry.init_item_arrays`, each device's upload
``Q - lr grad`` at its closed-form ``p`` (:mod:`fedrec.training.ials`) cast to float32,
and the run's own :func:`~fedrec.federated.aggregation.build_server_optimizer` stepping on
the cohort's mean. ``fast`` forms that mean in float64 before one float32 cast. Scored as
the harness scores iALS: closed-form user vectors, full ranking over the given users
(:func:`fedrec.metrics.evaluate.evaluate_scores`). Equal to the reference loop
(:func:`fedrec.federated.loop.run_federated`) up to float rounding (tested), and to
``fedrec simulate``'s all-user evaluations bit for bit on ml-1m's sparse cut at the
rounds compared (``docs/RESULTS.md``, "Defaults from the data's shape").

    python -m simulations.ials_rounds --data D [--validation] [--fast] [--evals 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from fedrec.data.split import Split
from fedrec.federated.aggregation import ServerConfig, build_server_optimizer, sample_clients
from fedrec.federated.presets import federated_preset
from fedrec.federated.shape import DataShape, ials_shaped_defaults
from fedrec.metrics.evaluate import evaluate_scores
from fedrec.models.base import Arrays
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import init_item_arrays
from fedrec.training.ials import gramian, item_gradient, solve_rows
from fedrec.training.threads import single_threaded

F64 = npt.NDArray[np.float64]


def mean_upload(
    q64: F64,
    p: F64,
    train: sp.csr_matrix,
    cohort: npt.NDArray[np.int64],
    *,
    alpha0: float,
    lam: float,
    lr: float,
    fast: bool,
) -> npt.NDArray[np.float32]:
    """The cohort's mean of ``float32(Q - lr grad_u)`` (``fast``: ``float32`` of the mean)."""
    c = len(cohort)
    if fast:
        grad = (2.0 * alpha0 / c) * (q64 @ (p.T @ p)) + (2.0 * lam * alpha0) * q64
        for j, u in enumerate(cohort):
            idx = train.indices[train.indptr[u] : train.indptr[u + 1]]
            qi = q64[idx]
            grad[idx] += (2.0 / c) * (np.outer(qi @ p[j] - 1.0, p[j]) + lam * qi)
        return (q64 - lr * grad).astype(np.float32)
    acc = np.zeros_like(q64)
    for j, u in enumerate(cohort):
        idx = train.indices[train.indptr[u] : train.indptr[u + 1]]
        g = item_gradient(p[j], q64, idx, alpha0=alpha0, lam=lam)
        acc += (q64 - lr * g).astype(np.float32)
    return (acc / c).astype(np.float32)


def evaluate(
    split: Split, items: Arrays, model_cfg: ModelConfig, users: npt.NDArray[np.int64] | None = None
) -> dict[str, Any]:
    """Full-ranking metrics of the closed-form user vectors on ``items``."""
    train = sp.csr_matrix(split.train)
    q = np.asarray(items[0], dtype=np.float64)
    g, qt = gramian(q), torch.from_numpy(q)

    def score(chosen: npt.NDArray[np.int64]) -> torch.Tensor:
        p = solve_rows(q, train[chosen], alpha0=model_cfg.alpha0, lam=model_cfg.l2, gram=g)
        return (torch.from_numpy(p) @ qt.T).float()

    return dict(evaluate_scores(score, split, users=users))


def run_rounds(
    split: Split,
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    server_cfg: ServerConfig,
    *,
    rounds: int,
    clients_per_round: int,
    seed: int = 0,
    eval_at: Collection[int] = (),
    fast: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> Arrays:
    """Run the rounds; evaluate every test user after each round in ``eval_at``."""
    if train_cfg.epochs != 1 or train_cfg.optimizer != "sgd":
        raise ValueError("the batched rounds cover the preset's one SGD epoch only")
    train = sp.csr_matrix(split.train)
    eligible = np.flatnonzero(np.diff(train.indptr) > 0).astype(np.int64)
    items = init_item_arrays(model_cfg, split.n_items, seed=seed)
    server = build_server_optimizer(server_cfg, rounds)
    a0, lam = model_cfg.alpha0, model_cfg.l2
    for rnd in range(1, rounds + 1):
        cohort = eligible[sample_clients(len(eligible), clients_per_round, rnd - 1, seed)]
        if len(cohort):
            q64 = np.asarray(items[0], dtype=np.float64)
            p = solve_rows(q64, train[cohort], alpha0=a0, lam=lam)
            mean = mean_upload(
                q64, p, train, cohort, alpha0=a0, lam=lam, lr=train_cfg.lr, fast=fast
            )
            items = server.step(items, [[mean]])
        else:
            items = server.step(items, [])
        if rnd in eval_at and on_eval is not None:
            on_eval({"round": rnd, **evaluate(split, items, model_cfg)})
    return items


def main(argv: list[str] | None = None) -> None:
    from server.settings import RunSettings, load_split

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--validation", action="store_true", help="the validation split")
    ap.add_argument("--fast", action="store_true", help="cohort mean in float64")
    ap.add_argument("--evals", type=int, default=10, help="evaluations over the run")
    ap.add_argument("--eval-rounds", default="", help="more rounds to evaluate (a,b,...)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--clients-per-round", type=int)
    ap.add_argument("--set", action="append", default=[], metavar="model.F=V|server.F=V")
    ap.add_argument("--out", help="JSON file of the history")
    args = ap.parse_args(argv)
    start, cpu = time.time(), time.process_time()
    split = load_split(
        RunSettings(data=args.data, validation_fraction=0.2 if args.validation else None)
    )
    model_cfg, train_cfg, server_cfg = federated_preset("ials")
    shaped = ials_shaped_defaults(DataShape.of_train(split.train))
    model_cfg = dataclasses.replace(model_cfg, **shaped.model)  # type: ignore[arg-type]
    server_cfg = dataclasses.replace(server_cfg, **shaped.server)  # type: ignore[arg-type]
    for item in args.set:
        key, _, text = item.partition("=")
        part, _, name = key.partition(".")
        value = json.loads(text)
        if part == "model":
            model_cfg = dataclasses.replace(model_cfg, **{name.replace("-", "_"): value})
        else:
            server_cfg = dataclasses.replace(server_cfg, **{name.replace("-", "_"): value})
    rounds = args.rounds or shaped.rounds
    k = args.clients_per_round or shaped.clients_per_round
    every = max(1, math.ceil(rounds / args.evals))
    eval_at = set(range(every, rounds, every)) | {rounds}
    eval_at |= {int(r) for r in args.eval_rounds.split(",") if r}
    history: list[dict[str, Any]] = []

    def on_eval(metrics: dict[str, Any]) -> None:
        row = {key: metrics[key] for key in ("round", "ndcg@10", "recall@20")}
        row |= {"wall": round(time.time() - start, 1), "cpu": round(time.process_time() - cpu, 1)}
        history.append(row)
        print(json.dumps(row), flush=True)

    setup = {"rounds": rounds, "clients_per_round": k, "model": dataclasses.asdict(model_cfg)}
    print(json.dumps({**setup, "server": dataclasses.asdict(server_cfg)}), flush=True)
    with single_threaded():  # as simulate: one BLAS thread for many small products
        run_rounds(
            split,
            model_cfg,
            train_cfg,
            server_cfg,
            rounds=rounds,
            clients_per_round=k,
            eval_at=eval_at,
            fast=args.fast,
            on_eval=on_eval,
        )
    last = [h["ndcg@10"] for h in history if h["round"] >= 0.7 * rounds]
    summary = {"final": history[-1], "last30_range": max(last) - min(last)}
    print(json.dumps(summary), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({**setup, "history": history, **summary}, fh, indent=1)


if __name__ == "__main__":
    main()
