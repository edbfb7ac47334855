"""The SecAgg+ communication graph: a random Harary graph (Bell et al., CCS 2020).

Each node shares its secrets with, and masks against, only its ``k`` neighbours
instead of all ``n - 1`` other nodes, which makes the protocol's cost
polylogarithmic in ``n`` per node. Bell et al. take the Harary graph ``H(k, n)`` (nodes
on a ring, each joined to its ``k / 2`` nearest nodes on either side) over a random
ordering of the nodes. Small cohorts (``k >= n - 1``) get the complete graph, which
is the original SecAgg (Bonawitz et al., CCS 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def harary_graph(
    nodes: Sequence[int], degree: int, rng: np.random.Generator
) -> dict[int, list[int]]:
    """Neighbours of every node: a random ``H(degree, n)``, or complete if small.

    ``degree`` is rounded up to even (each node gets ``degree / 2`` on either side).
    """
    ids = [int(n) for n in nodes]
    if len(set(ids)) != len(ids):
        raise ValueError("node ids must be distinct")
    n = len(ids)
    if degree < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    if degree >= n - 1:
        return {u: sorted(v for v in ids if v != u) for u in ids}
    half = (degree + 1) // 2
    order = [ids[i] for i in rng.permutation(n)]
    out: dict[int, set[int]] = {u: set() for u in ids}
    for pos, u in enumerate(order):
        for step in range(1, half + 1):
            v = order[(pos + step) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: sorted(vs) for u, vs in out.items()}


__all__ = ["harary_graph"]
