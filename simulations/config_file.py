"""``fedrec simulate --config FILE`` and the flags a user gave explicitly.

A config file holds flat settings, the keys of ``--set`` and of a run's
``config.json`` (``model``, ``num-server-rounds``, ``model.dim``, ``server.server-lr``,
...), as a JSON object or a TOML document (dotted keys or ``[model]``-style tables).
``fedrec tune`` writes one (``best.json``). Precedence, highest first: a flag given
on the command line, ``--set``, the file, the defaults. Whether a flag was given is
recorded while parsing (:func:`track_explicit`), so a flag given with its default
value still overrides the file.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError

EXPLICIT = "_explicit_flags"
"""The attribute of the parsed namespace that lists the destinations given explicitly."""
FROM_FILE = "_keys_from_config"
"""The attribute of the parsed namespace that maps each flat key the file set to the file."""

FLAG_OF_KEY = {
    "data": "data",
    "model": "model",
    "strategy": "strategy",
    "num-server-rounds": "rounds",
    "clients-per-round": "clients_per_round",
    "seed": "seed",
    "eval-every": "eval_every",
    "eval-clients": "eval_clients",
    "min-rating": "min_rating",
    "k-core": "k_core",
    "server.server-lr": "server_lr",
    "train.proximal-mu": "proximal_mu",
    "privacy": "privacy",
    "privacy.target-epsilon": "target_epsilon",
    "privacy.delta": "delta",
    "privacy.noise-multiplier": "noise_multiplier",
    "privacy.clip-norm": "clip_norm",
    "privacy.accountant": "accountant",
    "privacy.adaptive-clipping": "adaptive_clipping",
    "privacy.bias-scale": "bias_scale",
}
"""Flat keys that have a ``fedrec simulate`` flag; every other key becomes a ``--set``."""


def track_explicit(parser: argparse.ArgumentParser) -> None:
    """Make every option of ``parser`` record its destination in ``args._explicit_flags``."""
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        base = type(action)

        def call(
            self: argparse.Action,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
            _base: type[argparse.Action] = base,
        ) -> None:
            _base.__call__(self, parser, namespace, values, option_string)
            given = set(getattr(namespace, EXPLICIT, ()))
            setattr(namespace, EXPLICIT, given | {self.dest})

        action.__class__ = type(f"Tracked{base.__name__}", (base,), {"__call__": call})


def explicit(args: argparse.Namespace) -> set[str]:
    """Destinations of the options given on the command line."""
    return set(getattr(args, EXPLICIT, ()))


def read_config(path: Path) -> dict[str, Any]:
    """The flat settings of a JSON or TOML config file (nested tables become dotted keys)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            f"cannot read the config file ({err.strerror or err})",
            where=str(path),
            fix="give a JSON or TOML file of flat settings, e.g. the best.json of fedrec tune",
        ) from err
    try:
        loaded: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ConfigError(
            f"not valid {kind} ({err})",
            where=str(path),
            fix='write flat settings, e.g. {"model": "mf", "model.dim": 64}',
        ) from err
    if not isinstance(loaded, dict):
        raise ConfigError(
            "expected an object of settings", where=str(path), fix='e.g. {"model.dim": 64}'
        )
    if isinstance(loaded.get("settings"), dict):  # a run's own config.json: rerun it
        loaded = {k: v for k, v in loaded["settings"].items() if k not in RUN_ONLY_KEYS}
    return _flatten(loaded, "")


RUN_ONLY_KEYS = ("run-dir",)
"""Keys of a run's config.json that belong to that run, not to a rerun (``--out`` says)."""


def _flatten(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def apply_config(args: argparse.Namespace) -> set[str]:
    """Fold ``args.config``'s settings into ``args``: flags given explicitly win.

    Keys with a flag set that flag (unless given); the others are placed before the
    command line's ``--set`` pairs, which therefore override them. Returns the
    destinations the file set.
    """
    path = getattr(args, "config", None)
    if path is None:
        return set()
    flat = read_config(Path(path))
    given = explicit(args)
    mode = args.privacy if "privacy" in given else flat.get("privacy", "none")
    if mode == "none":  # a non-private run's config.json records the privacy defaults too
        flat = {k: v for k, v in flat.items() if not k.startswith("privacy.")}
    sets: list[str] = []
    applied: set[str] = set()
    typed = {item.partition("=")[0].strip() for item in args.set or []}  # --set wins
    origin: dict[str, str] = {}
    for key, value in flat.items():
        dest = FLAG_OF_KEY.get(key)
        if dest is None:
            sets.append(f"{key}={json.dumps(value)}")
            if key not in typed:
                origin[key] = str(path)
        elif dest not in given:
            setattr(args, dest, value)
            applied.add(dest)
            origin[key] = str(path)
    args.set = [*sets, *(args.set or [])]
    setattr(args, FROM_FILE, origin)
    return applied


def key_origin(args: argparse.Namespace, key: str) -> str:
    """Where the value of flat ``key`` came from, for an error's ``where``."""
    path = getattr(args, FROM_FILE, {}).get(key)
    return f"{path}: {key}" if path is not None else f"--set {key}"


MF_ONLY_FLAGS = (
    "rounds",
    "strategy",
    "clients_per_round",
    "server_lr",
    "proximal_mu",
    "adaptive_clipping",
    "bias_scale",
)
"""Flags that configure round-based training: given them, central mode keeps MF."""


def mf_flags_given(args: argparse.Namespace) -> list[str]:
    """The flags of MF's round-based training given on the command line, as typed."""
    given = explicit(args)
    training = [f"--{f.replace('_', '-')}" for f in MF_ONLY_FLAGS if f in given]
    return training + [
        f"--set {item.partition('=')[0]}"
        for item in args.set or []
        if item.startswith(("model.", "train.", "server."))
    ]


def central_default_model(args: argparse.Namespace, n_items: int) -> tuple[str, str]:
    """The model of a ``--privacy central`` run given no ``--model``, and why.

    Federated EASE (one round, docs/GRAM_EASE.md) when the catalog fits its cap: on
    ml-1m at epsilon 8 it reaches NDCG@10 0.377 where DP-FedAvg MF reaches 0.127, below
    popularity's 0.206 (issue 17). Above the cap iALS with its central preset (every
    user every round): on ml-100k at epsilon 8, delta 1e-4, 0.3266 where MF's default
    reaches 0.1446; on ml-1m at delta 1e-5, 0.296 (a replica of the mechanism,
    docs/RESULTS.md). MF when flags of MF's round-based training were given (they would
    mean nothing to EASE).
    """
    from fedrec.federated.gram import MAX_GRAM_ITEMS

    cap = int(_set_value(args, "ease.max-items", MAX_GRAM_ITEMS))
    training = mf_flags_given(args)
    if training:
        return "mf", f"mf (central mode's default is EASE, but {' '.join(training)} given)"
    if n_items > cap:
        return "ials", (
            f"ials (the catalog's {n_items} items exceed federated EASE's cap of {cap}; "
            "iALS with every user in every round is the best measured round-based model "
            "under central DP)"
        )
    return "ease", (
        f"ease (federated EASE: central mode's default when the catalog fits, {n_items} <= "
        f"{cap} items; give --model to choose another)"
    )


NONPRIVATE_DEFAULT_MODEL = "ials"
"""The scalable model with the best measured default accuracy (docs/RESULTS.md, "Defaults
from the data's shape": NDCG@10 1.02x EASE on ml-100k, 0.97x on ml-1m, 0.99x on a dense
cut of ml-1m, where MF reached 0.95x and 0.85x on the first two)."""


def nonprivate_default_model(args: argparse.Namespace) -> tuple[str, str]:
    """The model of a run without privacy given no ``--model``, and why (issue 17 item 3).

    iALS with the data-shaped defaults; MF when flags of MF's round-based training were
    given (``--rounds``, ``--strategy``, ``--set model./train./server.``...), so commands
    written for the former default keep their meaning.
    """
    training = mf_flags_given(args)
    if training:
        return "mf", f"mf (the default is ials, but {' '.join(training)} given)"
    return NONPRIVATE_DEFAULT_MODEL, (
        "ials (implicit ALS, the default without privacy: the best measured scalable model, "
        "its rounds and alpha0 from the data's shape; give --model to choose another)"
    )


def _set_value(args: argparse.Namespace, key: str, default: Any) -> Any:
    for item in reversed(args.set or []):
        name, _, text = item.partition("=")
        if name.strip() == key:
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
    return default
