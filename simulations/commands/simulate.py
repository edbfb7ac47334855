"""``fedrec simulate``: a federated run in Flower's simulation engine, one node per user.

``fedrec simulate --data PATH --out RUN_DIR`` alone uses the tuned defaults (MF,
FedAdam; ``fedrec.models.config`` and ``fedrec.federated.aggregation``).
``--resume RUN_DIR`` continues a stopped run from its checkpoint and client stores,
with the settings recorded in its ``config.json`` (other flags are ignored); a
non-private resumed run ends with exactly the result of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrec.data.atomic import check_output_dir, private_files
from fedrec.errors import ConfigError
from fedrec.federated.aggregation import STRATEGIES
from fedrec.federated.presets import default_rounds
from fedrec.models.config import MODEL_KIND_NAMES
from fedrec.privacy.config import ACCOUNTANTS, PRIVACY_MODES
from fedrec.training.allocator import ENV as ALLOCATOR_ENV
from fedrec.training.allocator import steady_allocator
from fedrec.training.device import DEVICES, compute_device
from server.settings import RunSettings, load_split
from simulations.commands.common import add_data_arguments
from simulations.config_file import key_origin, track_explicit
from simulations.progress import Progress
from simulations.tracking import TRACKERS, check_tracker, open_tracker

# Everything above is light (no torch, Opacus, Flower, pandas): ``fedrec --help`` and
# every command's parser import this module (tests/test_cli_fast.py). The rest loads in
# the functions that run.
if TYPE_CHECKING:
    from fedrec.data.split import Split
    from server.gram_settings import GramSettings
    from simulations.run_dir import RunDirLock

NAME = "simulate"
GRAM_MODEL = "ease"
HELP = "Run a federated simulation (Flower, one simulated device per user)."
_DEFAULTS = RunSettings()
NOT_EMPTY_FIX = "choose a new --out, or continue that run with --resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument(
        "--model",
        choices=(*MODEL_KIND_NAMES, GRAM_MODEL),
        default=_DEFAULTS.model.kind,
        help="ease: one-shot federated EASE (one round; docs/GRAM_EASE.md). Default: ials "
        "(mf under --privacy local, or given MF's round flags such as --rounds); with "
        "--privacy central, ease when the catalog fits its cap",
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default=_DEFAULTS.server.strategy)
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="server rounds (non-private defaults: MF 150, CDAE 300, Mult-VAE 400, iALS 150, "
        "NCF 50, SASRec 600; private: 20)",
    )
    parser.add_argument(
        "--clients-per-round",
        type=int,
        default=None,
        metavar="K",
        help="expected users per round (Poisson sampling, q = K / users; default: "
        f"{_DEFAULTS.clients_per_round}, or every user when there are fewer)",
    )
    parser.add_argument("--out", type=Path, default=None, help="run directory to create")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR")
    parser.add_argument("--seed", type=int, default=0, help="split, init and sampling seed")
    add_privacy_arguments(parser)
    parser.add_argument(
        "--eval-every",
        type=int,
        default=5,
        metavar="N",
        help="evaluate a sample of --eval-clients users every N rounds (0: only at the end)",
    )
    parser.add_argument(
        "--eval-clients", type=int, default=100, help="users sampled for periodic evaluation"
    )
    parser.add_argument("--server-lr", type=float, default=None, help="server learning rate")
    parser.add_argument("--proximal-mu", type=float, default=None, help="FedProx mu")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any flat setting, e.g. model.dim=16 or train.epochs=5 (repeatable)",
    )
    parser.add_argument(
        "--engine",
        choices=("inprocess", "ray"),
        default="inprocess",
        help="inprocess (default): the apps in this process, no sockets; ray: Flower's Ray "
        "simulation engine with token authentication (docs/SECURITY.md)",
    )
    parser.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray CPUs per actor")
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="with --engine ray: run the clients on this running Ray cluster (ray start on "
        "each machine, token authentication on; docs/SCALE.md) instead of starting one",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the run's ranking and EASE reference run (a simulated device trains and "
        "evaluates on the CPU, as a phone would); cuda is refused where it is unavailable",
    )
    parser.add_argument(
        "--track",
        choices=TRACKERS,
        default=None,
        help="also write the run's curves for TensorBoard under RUN_DIR/tensorboard "
        "(pip install 'fedrec[track]')",
    )
    parser.add_argument("--verbose", action="store_true", help="show Flower and Ray logs")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="flat settings (JSON or TOML, the keys of --set; e.g. fedrec tune's best.json); "
        "flags given on the command line and --set override it",
    )
    track_explicit(parser)  # --config: which flags were given (simulations/config_file.py)


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """The run's settings from the command line (``--out`` must be set)."""
    flat: dict[str, Any] = {
        "data": str(args.data),
        "model": args.model,
        "strategy": args.strategy,
        "num-server-rounds": (
            args.rounds if args.rounds is not None else default_rounds(args.model, args.privacy)
        ),
        "clients-per-round": (
            args.clients_per_round
            if args.clients_per_round is not None
            else _DEFAULTS.clients_per_round
        ),
        "seed": args.seed,
        "privacy": args.privacy,
        "eval-every": args.eval_every,
        "eval-clients": args.eval_clients,
        "run-dir": str(Path(args.out).resolve()),
    }
    if args.min_rating is not None:
        flat["min-rating"] = float(args.min_rating)
    if args.k_core is not None:
        flat["k-core"] = int(args.k_core)
    if args.server_lr is not None:
        flat["server.server-lr"] = float(args.server_lr)
    elif args.strategy != "fedadam":
        flat["server.server-lr"] = 1.0  # plain averaging for FedAvg / FedProx
    if args.proximal_mu is not None:
        flat["train.proximal-mu"] = float(args.proximal_mu)
    flat.update(privacy_flat(args))
    flat.update(parse_sets(args.set))
    check_set_types(flat, where=lambda key: key_origin(args, key))  # --config's values too
    if args.seed < 0:
        raise ConfigError(f"must be >= 0, got {args.seed}", where="--seed")
    if args.k_core is not None and args.k_core < 1:
        raise ConfigError(f"must be at least 1, got {args.k_core}", where="--k-core")
    return RunSettings.from_run_config(flat)


def check_set_types(
    sets: dict[str, Any], where: Callable[[str], str] = lambda key: f"--set {key}"
) -> None:
    """Refuse an unknown key or a value of the wrong type (e.g. ``model.dim=1.5``) up
    front, naming where it was given (``where(key)``: ``--set`` or the config file)."""
    from fedrec.federated.aggregation import ServerConfig
    from fedrec.models.config import LocalTrainConfig, ModelConfig
    from fedrec.privacy.config import PrivacyConfig
    from server.settings import flat_keys, unknown_setting

    parts = {"model": ModelConfig(), "train": LocalTrainConfig(), "server": ServerConfig()}
    parts["privacy"] = PrivacyConfig()
    top = {f.name.replace("_", "-"): f for f in dataclasses.fields(RunSettings)}
    top["num-server-rounds"] = top.pop("rounds")  # the flat key of RunSettings.rounds
    defaults, valid = RunSettings(), set(flat_keys())
    for key, value in sets.items():
        prefix, _, rest = key.partition(".")
        if key not in valid:
            raise unknown_setting(key, where=where(key))
        if rest and prefix in parts:
            default = getattr(parts[prefix], rest.replace("-", "_"), None)
        elif key in top:
            default = getattr(defaults, top[key].name)
        else:
            continue  # model, strategy, privacy: checked by their configs
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True  # optional settings: checked where they are used
        if not ok:
            kind = type(default).__name__
            article = "an" if kind == "int" else "a"
            raise ConfigError(
                f"expected {article} {kind}, got {value!r}",
                where=where(key),
                fix=f"give {article} {kind} value, e.g. {key}={default!r}",
            )


def add_privacy_arguments(parser: argparse.ArgumentParser) -> None:
    """``--privacy`` and its parameters (docs/PRIVACY.md)."""
    parser.add_argument("--privacy", choices=PRIVACY_MODES, default="none", help="DP mode")
    parser.add_argument(
        "--target-epsilon",
        type=float,
        default=None,
        metavar="E",
        help="budget: per client (local) or for the run (central)",
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=None,
        help="default: min(1e-5, 1/(10 users)); the value used is recorded",
    )
    parser.add_argument(
        "--noise-multiplier",
        type=float,
        default=None,
        metavar="Z",
        help="give z directly instead of calibrating it to --target-epsilon",
    )
    parser.add_argument(
        "--clip-norm",
        type=float,
        default=None,
        metavar="S",
        help="per-example (local) or per-client-update (central) L2 bound",
    )
    parser.add_argument(
        "--accountant", choices=ACCOUNTANTS, default=None, help="Opacus accountant (default: rdp)"
    )
    parser.add_argument(
        "--adaptive-clipping",
        action="store_true",
        help="central: adapt S to the median update norm (Andrew et al. 2021)",
    )
    parser.add_argument(
        "--bias-scale",
        type=float,
        default=None,
        help="central: weight of the item biases inside the clipped update",
    )
    parser.add_argument(
        "--insecure-noise-seed",
        type=int,
        default=None,
        metavar="N",
        help="TESTS ONLY: reproducible noise, no privacy guarantee",
    )


def privacy_flat(args: argparse.Namespace) -> dict[str, Any]:
    """The flat ``privacy`` / ``privacy.<field>`` settings of the privacy flags.

    A privacy flag without ``--privacy`` is refused: the run would otherwise train with
    no privacy at all while the command line reads as if it had some.
    """
    refuse_privacy_flags_without_mode(args)
    accountant = args.accountant or "rdp"
    flat: dict[str, Any] = {"privacy": args.privacy, "privacy.accountant": accountant}
    for name in ("target_epsilon", "delta", "noise_multiplier", "clip_norm", "bias_scale"):
        if getattr(args, name) is not None:
            flat[f"privacy.{name.replace('_', '-')}"] = float(getattr(args, name))
    if args.adaptive_clipping:
        flat["privacy.adaptive-clipping"] = True
    if args.insecure_noise_seed is not None:
        flat["privacy.insecure-noise-seed"] = int(args.insecure_noise_seed)
    return flat


PRIVACY_FLAGS = (
    "target_epsilon",
    "delta",
    "noise_multiplier",
    "clip_norm",
    "accountant",
    "adaptive_clipping",
    "bias_scale",
    "insecure_noise_seed",
)
"""The flags that only mean something with ``--privacy local|central|distributed``."""


def refuse_privacy_flags_without_mode(args: argparse.Namespace) -> None:
    """Raise :class:`ConfigError` for a privacy flag given with ``--privacy none``."""
    if args.privacy != "none":
        return
    given = [
        f"--{name.replace('_', '-')}"
        for name in PRIVACY_FLAGS
        if getattr(args, name, None) is not None and getattr(args, name) is not False
    ]
    if given:
        raise ConfigError(
            "given without --privacy, the run would have no privacy at all",
            where=" ".join(given),
            fix="add --privacy local, central or distributed (docs/PRIVACY.md), or drop "
            + ("the flag" if len(given) == 1 else "these flags"),
        )


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values read as JSON when they parse (numbers, booleans)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"expected KEY=VALUE, got {item!r}",
                where="--set",
                fix="give one setting per --set, e.g. --set model.dim=16",
            )
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


USED_ON_RESUME = (
    "resume", "engine", "cpus_per_client", "ray_address", "verbose", "device", "track",
)  # fmt: skip
"""Flags a resumed run still follows; every other one is read from config.json."""


def resume_line(args: argparse.Namespace) -> str:
    """What ``--resume`` does, naming the flags it ignores (config.json's settings win)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    ignored = [
        f"--{name.replace('_', '-')}"
        for name, value in vars(args).items()
        if name in defaults and name not in USED_ON_RESUME and value != defaults[name]
    ]
    line = f"resuming {args.resume} with the settings recorded in its config.json"
    return line + (f"; ignored: {' '.join(ignored)}" if ignored else "")


def check_clients_per_round(args: argparse.Namespace, split: Split) -> None:
    """Refuse a ``--clients-per-round`` above the number of users who can be sampled."""
    from server.privacy_run import eligible_users

    k, n = getattr(args, "clients_per_round", None), len(eligible_users(split))
    if k is not None and k > n:
        raise ConfigError(
            f"{k} is more than the {n} users with train data",
            where="--clients-per-round",
            fix=f"use at most {n} (every user, each round)",
        )


def prepare_settings(settings: RunSettings, split: Split | None = None) -> RunSettings:
    """Resolve delta and (central) the noise multiplier, so config.json records them."""
    if not settings.privacy.enabled:
        return settings
    if settings.privacy.mode == "distributed":  # --model ease runs take _run_gram instead
        from fedrec.privacy.distributed import refuse_for_model

        refuse_for_model(settings.model.kind)
    from fedrec.federated.local_budget import check_first_round_affordable
    from server.privacy_run import resolve_settings

    split = split if split is not None else load_split(settings)
    resolved = resolve_settings(settings, split)
    n_train = split.train.indptr[1:] - split.train.indptr[:-1]
    check_first_round_affordable(resolved.privacy, resolved.model, resolved.train, n_train)
    return resolved


ENGINES = {
    "inprocess": "in-process (no Ray, no network sockets)",
    "ray": "Ray (token authentication, a token made for this run)",
}


def engine_line(engine: str, ray_address: str | None = None) -> str:
    """The line that says which engine runs (and how Ray is secured)."""
    from fedrec.ray_auth import user_token_configured

    if engine == "ray" and ray_address is not None:
        return (
            f"engine: Ray cluster at {ray_address} (token authentication, your "
            "RAY_AUTH_MODE/RAY_AUTH_TOKEN settings)"
        )
    if engine == "ray" and user_token_configured():
        return "engine: Ray (token authentication, your RAY_AUTH_MODE/RAY_AUTH_TOKEN settings)"
    return f"engine: {ENGINES[engine]}"


def run(args: argparse.Namespace) -> int:
    if (args.out is None) == (args.resume is None):
        raise ConfigError("give exactly one of --out and --resume", where="fedrec simulate")
    check_engine_flags(args)
    check_tracker(getattr(args, "track", None))
    device = getattr(args, "device", "cpu")
    with compute_device(device):  # refuses cuda where unavailable, before anything is made
        if args.resume is None:
            choose_model(args)
        refuse_round_options_for_gram(args)
        with private_files():  # run files hold user data: private, in Ray's workers too
            return _run(args)


def refuse_round_options_for_gram(args: argparse.Namespace) -> None:
    """Refuse ``--track`` and quantized uploads for federated EASE (one round, a Gram upload)."""
    if not _is_gram_run(args):
        return
    if getattr(args, "track", None) is not None:
        raise ConfigError(
            "tracking covers round-by-round runs; a federated-EASE run has one round",
            where="--track",
            fix="drop --track (the run's metrics.json and report.md hold its result)",
        )
    sets = parse_sets(getattr(args, "set", None) or [])
    uploads = [key for key in sets if key.startswith("train.upload")]
    if uploads:
        raise ConfigError(
            "quantized uploads apply to item-side updates; federated EASE uploads a Gram "
            "matrix (its own encoding under --privacy distributed)",
            where="--set " + ", ".join(uploads),
            fix="drop it, or choose a model trained in rounds (e.g. --model mf)",
        )


def check_engine_flags(args: argparse.Namespace) -> None:
    """Refuse ``--ray-address`` without ``--engine ray``, or without the cluster's token."""
    address = getattr(args, "ray_address", None)
    if address is None:
        return
    if args.engine != "ray":
        raise ConfigError(
            f"only the Ray engine joins a cluster, and --engine is {args.engine}",
            where="--ray-address",
            fix="add --engine ray, or drop --ray-address",
        )
    from simulations.simulation import check_ray_address

    check_ray_address(address)


def choose_model(args: argparse.Namespace) -> None:
    """Fold in ``--config``; without a model given, central mode's default (issue 17)."""
    from simulations.commands.common import load_data
    from simulations.config_file import (
        apply_config,
        central_default_model,
        explicit,
        nonprivate_default_model,
    )

    from_file = apply_config(args)
    if args.privacy == "local" or "model" in explicit(args) | from_file:
        return
    if args.privacy == "none":
        args.model, why = nonprivate_default_model(args)
    elif args.privacy == "distributed":
        args.model, why = GRAM_MODEL, "ease (the only model of --privacy distributed)"
    else:
        args.model, why = central_default_model(args, load_data(args).n_items)
    print(f"model: {why}")


def _run(args: argparse.Namespace) -> int:
    from server.checkpoint import headcount
    from simulations.inprocess import simulate_in_process
    from simulations.run_dir import (
        acquire_run_dir,
        check_fingerprint,
        finished_round,
        open_new_run_dir,
        resume_settings,
    )
    from simulations.shaped import apply_shape_defaults
    from simulations.simulation import simulate

    steady_allocator()  # device models' large tensors: reuse heap memory, no page faults
    os.environ.update(ALLOCATOR_ENV)  # and in Ray's worker processes, started later
    if _is_gram_run(args):  # federated EASE has its own one-round server (server.gram_app)
        return _run_gram(args)
    if args.resume is not None:
        run_dir = Path(args.resume).resolve()
        settings = resume_settings(run_dir)
        print(resume_line(args))
        lock = acquire_run_dir(run_dir)  # before reading anything the run will change
        try:
            check_fingerprint(run_dir, load_split(settings), settings)
        except BaseException:
            lock.release()
            raise
        done = finished_round(run_dir)
    else:  # everything that can refuse the run comes before its directory exists
        settings = settings_from_args(args)
        check_output_dir(Path(settings.run_dir), fix_not_empty=NOT_EMPTY_FIX)  # before loading
        split = load_split(settings)
        check_clients_per_round(args, split)
        settings, shaped = apply_shape_defaults(settings, split, args)  # issue 17 item 4
        for reason in shaped:
            print(f"default from the data's shape: {reason}")
        settings = prepare_settings(settings, split)
        lock = open_new_run_dir(Path(settings.run_dir), settings, split)
        done = 0
    print(engine_line(args.engine, getattr(args, "ray_address", None)))
    tracker = open_tracker(getattr(args, "track", None), Path(settings.run_dir))
    with lock, Progress(settings.rounds - done, "rounds") as bar:

        def on_round(record: dict[str, Any]) -> None:
            if tracker is not None:
                tracker.log_round(record)
            metrics = record.get("metrics") or {}
            fields = {"round": record["round"], "failed": headcount(record["failed"])}
            if metrics.get("ndcg@10") is not None:
                fields["ndcg@10"] = float(metrics["ndcg@10"])
            fields.update(epsilon_fields(record.get("epsilon")))
            if record.get("stopped"):
                print(record["stopped"])
            bar.update(1, **fields)

        try:
            if args.engine == "inprocess":
                metrics = simulate_in_process(settings, on_round=on_round)
            else:
                metrics = simulate(
                    settings,
                    on_round=on_round,
                    verbose=args.verbose,
                    cpus_per_client=args.cpus_per_client,
                    ray_address=getattr(args, "ray_address", None),
                )
        except Exception:
            if tracker is not None:
                tracker.close()
            if args.resume is None:
                remove_if_unstarted(Path(settings.run_dir))
            raise
    if tracker is not None:
        tracker.log_final(metrics)
        tracker.close()
    _print_summary(settings, metrics)
    return 0


def epsilon_fields(epsilon: Any) -> dict[str, float]:
    """The progress line's epsilon: the run's (central), the largest device's (local)."""
    if isinstance(epsilon, dict) and epsilon.get("max") is not None:
        return {"eps_max": round(float(epsilon["max"]), 3)}
    if isinstance(epsilon, int | float) and not isinstance(epsilon, bool):
        return {"eps": round(float(epsilon), 3)}
    return {}


def remove_if_unstarted(run_dir: Path) -> None:
    """Remove a new run's directory when the run failed before finishing any round.

    Such a directory holds nothing to resume from (no checkpoint, no round) and would
    block a rerun with the same ``--out``.
    """
    import shutil

    from simulations.run_dir import CHECKPOINT_JSON, ROUNDS_JSONL

    if not (run_dir / CHECKPOINT_JSON).exists() and not (run_dir / ROUNDS_JSONL).exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def _is_gram_run(args: argparse.Namespace) -> bool:
    if args.resume is None:
        return bool(args.model == GRAM_MODEL)
    config = Path(args.resume) / "config.json"
    try:
        return bool(json.loads(config.read_text())["settings"]["model"] == GRAM_MODEL)
    except (OSError, ValueError, KeyError, TypeError):
        return False  # the regular resume path reports what is wrong


def gram_settings(args: argparse.Namespace) -> tuple[GramSettings, Split]:
    """A new federated-EASE run's settings from the flags (resolved), and its split.

    Also ``fedrec deploy-local --model ease``'s. A run of one round has nothing to resume.
    """
    from server.gram_app import resolve
    from server.gram_settings import GramSettings
    from simulations.simulation import absolute

    if args.resume is not None:
        raise ConfigError(
            "a federated-EASE run has one round: there is nothing to resume",
            where=str(args.resume),
            fix="start a new run with --out (a private run then spends its budget again)",
        )
    flat = {"data": str(args.data), "seed": args.seed, "eval-clients": args.eval_clients,
            "run-dir": str(Path(args.out).resolve()), **privacy_flat(args),
            **parse_sets(args.set), "model": GRAM_MODEL}  # fmt: skip
    for key, value in (("min-rating", args.min_rating), ("k-core", args.k_core)):
        if value is not None:
            flat[key] = value
    settings = GramSettings.from_flat(flat)
    settings = dataclasses.replace(settings, base=absolute(settings.base))
    split = load_split(settings.base)
    return resolve(settings, split), split


def open_gram_run_dir(settings: GramSettings, split: Split) -> RunDirLock:
    """Create a federated-EASE run's directory with its own ``config.json``; its lock."""
    from server.checkpoint import CONFIG_JSON, atomic_write_json
    from simulations.run_dir import config_payload, fingerprint, open_new_run_dir

    run_dir = Path(settings.base.run_dir)
    lock = open_new_run_dir(run_dir, settings.base, split)  # config.json rewritten:
    payload = config_payload(settings.base)
    payload["fingerprint"] = fingerprint(split, settings.base)
    atomic_write_json(run_dir / CONFIG_JSON, settings.config_payload(payload))
    return lock


def _run_gram(args: argparse.Namespace) -> int:
    """``--model ease``: settings, run directory, engine; the round is server.gram_app's."""
    from server.gram_app import make_gram_server_app, run_gram_server
    from simulations.evaluation import gram_evaluator
    from simulations.inprocess import InProcessGrid
    from simulations.run_dir import read_metrics
    from simulations.run_model import finish_run
    from simulations.simulation import run_apps

    settings, split = gram_settings(args)
    run_dir = Path(settings.base.run_dir)
    lock = open_gram_run_dir(settings, split)
    print(engine_line(args.engine, getattr(args, "ray_address", None)))
    with lock, Progress(1, "rounds") as bar:

        def on_round(record: dict[str, Any]) -> None:
            ndcg = float((record.get("metrics") or {}).get("ndcg@10", 0.0))
            bar.update(1, ndcg=ndcg, **epsilon_fields(record.get("epsilon")))

        measure = gram_evaluator(settings.base)  # the harness's, outside the messages
        if args.engine == "inprocess":
            run_gram_server(InProcessGrid(split.n_users), settings, on_round, evaluator=measure)
        else:
            server_app = make_gram_server_app(settings, on_round, evaluator=measure)
            run_apps(server_app, split.n_users, verbose=args.verbose,
                     cpus_per_client=args.cpus_per_client,
                     ray_address=getattr(args, "ray_address", None))  # fmt: skip
    finish_run(run_dir)
    metrics = read_metrics(run_dir)
    refs = metrics.get("reference", {})
    print(
        f"ease (federated, privacy {settings.base.privacy.mode}) on {settings.base.data}: "
        f"NDCG@10 {_fmt(metrics.get('ndcg@10'))}; popularity "
        f"{_fmt(refs.get('popularity', {}).get('ndcg@10'))}; "
        f"EASE {_fmt(refs.get('ease', {}).get('ndcg@10'))}"
    )
    print(f"wrote {run_dir}")
    return 0


def _print_summary(settings: RunSettings, metrics: dict[str, Any]) -> None:
    refs = metrics.get("reference", {})
    line = (
        f"{settings.model.kind}/{settings.server.strategy} on {settings.data}: "
        f"NDCG@10 {_fmt(metrics.get('ndcg@10'))} after {settings.rounds} rounds"
    )
    for name in ("popularity", "ease"):
        if name in refs:
            line += f"; {name} {_fmt(refs[name].get('ndcg@10'))}"
    print(line)
    print(f"wrote {settings.run_dir}")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


__all__ = [
    "HELP",
    "NAME",
    "add_arguments",
    "add_privacy_arguments",
    "engine_line",
    "gram_settings",
    "open_gram_run_dir",
    "parse_sets",
    "prepare_settings",
    "privacy_flat",
    "run",
    "settings_from_args",
]
