"""A run's privacy guarantee in plain words, for ``report.md`` and the sweep report.

Every sentence restates docs/PRIVACY.md (the threat-model table and "What the server
sees, mode by mode and model by model"), which stays the reference: the report links
there instead of copying the details. Nothing here computes an epsilon; the numbers come
from the run's ``privacy.json`` and ``config.json``.
"""

from __future__ import annotations

from typing import Any

from fedrec.models.registry import MODEL_KINDS, model_class

PRIVACY_DOC = "docs/PRIVACY.md"
SERVER_SEES = f"{PRIVACY_DOC}, section 'What the server sees, mode by mode and model by model'"


def unit_sentence(mode: str, model: str | None) -> str:
    """What one epsilon protects, in words (the unit of privacy)."""
    if mode == "local":
        if model in MODEL_KINDS and model_class(model).LOCAL_DP_UNIT == "user":
            return (
                "**What epsilon protects: one user's whole interaction vector, on that user's "
                "own device.** Each upload is (epsilon, delta)-indistinguishable from the "
                "upload the same device would send with no data at all."
            )
        return (
            "**What epsilon protects: one interaction** (one rating, with the negatives "
            "sampled for it), on each device separately. A user with k interactions is "
            "protected as a whole only at about k times epsilon (group privacy), so "
            "'epsilon 8' here is a much weaker promise about a *user* than 'epsilon 8' in "
            "central mode."
        )
    if mode in ("central", "distributed"):
        return (
            "**What epsilon protects: one user, all of their interactions together.** "
            "Whatever is released (every global model, the final model) changes its "
            "distribution by at most a factor e^epsilon (plus delta) if any one user's "
            "data is added or removed. 'epsilon 8' here is a much stronger promise than "
            "'epsilon 8' in local mode, which covers one interaction."
        )
    return "**Nothing is protected:** privacy mode `none` makes no privacy claim."


def trust_sentence(mode: str, model: str | None = None) -> str:
    """Who must be trusted for the guarantee to hold."""
    if mode == "central" and model == "ease":
        return (
            "**Who is trusted:** the server. It receives every user's exact Gram upload and "
            "must add the noise to their sum as specified before anything is released; the "
            "guarantee is against everyone who sees the release, not against the server."
        )
    return {
        "local": "**Who is trusted:** only each user's own device; the server, and anyone who "
        "sees an upload or the final model, is the adversary.",
        "central": "**Who is trusted:** the server. It must clip each update, sample the "
        "cohorts secretly and add the noise as specified; the guarantee is against "
        "everyone who sees what it releases, not against the server itself.",
        "distributed": "**Who is trusted:** each device to add its noise share honestly, "
        "fewer than the SecAgg+ threshold of devices colluding, and the server only to "
        "follow the protocol (docs/SECAGG.md).",
    }.get(mode, "**Who is trusted:** everyone who handles an upload (there is no guarantee).")


def server_sees_sentence(mode: str, model: str | None) -> str:
    """What the server sees of one device, in one line (details: docs/PRIVACY.md)."""
    gram = model == "ease"
    if mode == "none":
        what = (
            "each user's exact Gram upload, which names the user's exact item set"
            if gram
            else "each sampled user's exact, un-noised update, from which it can tell which "
            "items the user touched"
        )
    elif mode == "local":
        what = "only DP-SGD outputs: every item row of an upload is noised on the device"
    elif mode == "central":
        what = (
            "each user's exact Gram upload (the user's item set and its size); only the "
            "release is noised"
            if gram
            else "each sampled user's exact update, as without privacy; the server itself "
            "clips it and adds the noise"
        )
    else:
        what = "masked uploads; it learns only the noisy sum"
    return f"**What the server sees:** {what} ({SERVER_SEES})."


def mechanism_sentence(privacy: dict[str, Any], config: dict[str, Any]) -> str:
    """Noise multiplier, clip norm and sampling rate as recorded."""
    settings = config.get("privacy") if isinstance(config.get("privacy"), dict) else {}
    settings = settings or {}
    z = privacy.get("noise_multiplier", settings.get("noise_multiplier"))
    clip = privacy.get("clip_norm", settings.get("clip_norm"))
    parts = [f"noise multiplier z = {_num(z)}"] if z is not None else []
    parts.append(f"clip norm C = {_num(clip)}")
    mode = privacy.get("mode")
    shares = privacy.get("distributed") or {}
    if mode == "distributed" and shares:
        parts.append(
            f"{shares.get('mechanism', 'skellam')} noise shares from "
            f"{shares.get('noise_devices', '–')} devices, summed under secure aggregation; "
            f"noise standard deviation of the release {_num(shares.get('release_noise_std'))}"
        )
    if mode == "central":
        rates = sorted({float(e[1]) for e in privacy.get("history") or []})
        if rates == [1.0]:
            parts.append("sampling rate q = 1 (every user's update joins every release)")
        elif rates:
            parts.append(
                "sampling rate q = "
                + ", ".join(_num(q) for q in rates)
                + " (each user joins a round with this probability; cohorts kept secret)"
            )
        parts.append("noise standard deviation z*C on the clipped sum of the cohort's updates")
    elif mode == "local":
        rates = sorted(
            {float(e[1]) for c in (privacy.get("clients") or {}).values() for e in c["history"]}
        )
        if rates:
            span = _num(rates[0]) if len(rates) == 1 else f"{_num(rates[0])} to {_num(rates[-1])}"
            parts.append(
                f"sampling rate q = {span} (the share of a device's interactions in each "
                "DP-SGD step; depends on the device's number of interactions)"
            )
        parts.append("noise standard deviation z*C on each step's sum of clipped gradients")
    return "**Mechanism:** " + "; ".join(parts) + "."


def references_sentence(names: list[str]) -> str:
    """The reference rows are themselves not private."""
    if not names:
        return ""
    listed = " and ".join(names)
    return (
        f"**The {listed} rows are not private:** they are centralized models fitted on every "
        "user's raw training data in one place, shown as yardsticks for accuracy. A private "
        "deployment could not publish them as they are."
    )


def below_popularity(
    ndcg: Any,
    popularity: Any,
    name: str = "this run",
    *,
    private: bool = True,
    model: str | None = None,
) -> str | None:
    """A warning when NDCG@10 is below the popularity baseline's (else ``None``).

    ``model``: the run's model kind, so that the advice does not suggest it again.
    """
    if ndcg is None or popularity is None or float(ndcg) >= float(popularity):
        return None
    other_model = "" if model == "ials" else "the best scalable model measured (`--model ials`), "
    advice = (
        "At this budget the model is not worth deploying as is: raise epsilon, train "
        "longer, or publish a DP popularity ranking instead (docs/PRIVACY.md, 'DP "
        "popularity release')."
        if private
        else "The model is not worth deploying as is. Try, in this order: more rounds "
        f"(`--rounds`; iALS's default grows with the users, docs/RESULTS.md), {other_model}"
        "`fedrec tune` on a validation split, or federated EASE (`--model ease`) when the "
        "catalog fits its cap."
    )
    return (
        f"**Below popularity:** {name} reaches NDCG@10 {float(ndcg):.4f}, less than the "
        f"{float(popularity):.4f} of recommending the most popular items to everyone. {advice}"
    )


def _num(value: Any) -> str:
    if value is None:
        return "–"
    return f"{float(value):.4g}"
