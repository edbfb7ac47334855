"""``fedrec audit RUN_DIR``: empirical privacy audit of a run (docs/PRIVACY.md, "Audit")."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "audit"
HELP = "attack a run as its threat model's adversary; write audit.json with epsilon lower bounds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="AUDIT_JSON", help="default: RUN_DIR/audit.json"
    )
    parser.add_argument("--clients", type=int, default=100, help="users audited (seeded sample)")
    parser.add_argument(
        "--shadow-clients", type=int, default=30, help="synthetic users calibrating the classifier"
    )
    parser.add_argument(
        "--release-trials", type=int, default=10, help="central: releases per audited user"
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="1 - confidence of the bounds")
    parser.add_argument("--seed", type=int, default=0, help="audit seed (public choices only)")


def run(args: argparse.Namespace) -> int:
    from fedrec.audit.results import AuditOptions
    from fedrec.data.atomic import private_files
    from fedrec.errors import ConfigError
    from simulations.audit import AUDIT_JSON, run_audit

    if args.clients < 4 or args.shadow_clients < 1 or args.release_trials < 1:
        raise ConfigError(
            "need --clients >= 4, --shadow-clients >= 1, --release-trials >= 1",
            where="fedrec audit",
        )
    if not 0 < args.alpha < 1:
        raise ConfigError(f"must lie in (0, 1), got {args.alpha}", where="--alpha")
    opts = AuditOptions(
        shadow_clients=args.shadow_clients,
        release_trials=args.release_trials,
        alpha=args.alpha,
        seed=args.seed,
    )
    out = args.out or args.run_dir / AUDIT_JSON
    with private_files():  # audit.json, its ROC plot and their folder describe the users
        payload = run_audit(args.run_dir, out, clients=args.clients, opts=opts)
    for entry in payload["attacks"]:
        print(
            f"{entry['attack']:<40} auc={_f(entry['auc'])} p@k={_f(entry['precision_at_k'])} "
            f"eps_lb={_f(entry['epsilon_lower_bound'])} eps={_f(entry['epsilon_accounted'])}"
        )
    if (sens := payload.get("unit_sensitivity")) is not None:
        verdict = "within" if sens["within_clip_norm"] else "ABOVE"
        print(f"{'unit_sensitivity':<40} change/clip={sens['ratio']:.6f} ({verdict} the clip norm)")
    if out.resolve().parent == args.run_dir.resolve() and (args.run_dir / "metrics.json").exists():
        from simulations.report import write_report

        write_report(args.run_dir)  # report.md gains the audit section
    print(out)
    return 0


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
