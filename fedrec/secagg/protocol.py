"""SecAgg+ (Bell, Bonawitz, Gascon, Lepoint & Raykova, CCS 2020) as two state machines.

The protocol of Bonawitz et al. (CCS 2017) restricted to a ``k``-regular neighbour graph
(:mod:`fedrec.secagg.graph`). All arithmetic is in the ring ``Z_{2^bits}`` (``uint32``
words up to 32 bits, else ``uint64``, wrapping and reduced by the low-bit mask).
Stages, server view in brackets:

1. **advertise keys**: each node makes two X25519 key pairs, ``enc`` (to encrypt
   shares) and ``mask`` (to agree pairwise masks), and a 32-byte self-mask seed ``b``
   [the public keys; survivors ``U1``].
2. **share keys**: each node Shamir-shares (``t``-out-of-``|N(u)|``) its ``mask``
   private key and ``b`` among its neighbours ``N(u) ∩ U1``, each share encrypted
   with AES-GCM under ``HKDF(X25519(enc_u, enc_v))`` with both ids and the round as
   associated data [ciphertexts only; survivors ``U2``].
3. **masked input**: node ``u`` with input ``x_u`` sends
   ``y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U2} sign(u, v) PRG(s_uv)  (mod 2^bits)``,
   ``s_uv = HKDF(X25519(mask_u, mask_v))``, ``sign = +1 if u < v else -1``. The server
   adds ``y_u`` into one running sum and drops it [``y_u``: uniform given ``b_u``;
   survivors ``U3``].
4. **unmasking**: given ``U3`` (at least ``t``), each survivor sends, for each neighbour
   that shared with it, its share of ``b_v`` if ``v`` survived and of ``mask_v``'s
   private key if ``v`` dropped; never both for one node, and only once. The server
   rebuilds, with at least ``t`` shares each, the self masks of ``U3`` and the pairwise
   masks of the dropped nodes with their surviving neighbours, and subtracts them:
   ``sum_{u in U3} x_u (mod 2^bits)`` [the sum].

Shamir secret sharing is injected (``split(secret, t, n) -> shares``, ``combine(shares)
-> secret``, shares self-indexed: :mod:`fedrec.secagg.shamir`, or Flower's
:mod:`flwr.common.secure_aggregation.crypto.shamir`). A rebuilt private key is checked
against its advertised public key. Masks are added as raw AES-CTR words and reduced
mod ``2^bits`` once (:func:`fedrec.secagg.crypto.mask_words`).
Security: an honest-but-curious server, alone or with fewer than ``t`` of a node's
neighbours, learns nothing about a surviving node's input beyond the sum (docs/SECAGG.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.errors import FedrecError
from fedrec.secagg import crypto

Ring = crypto.Ring
Split = Callable[[bytes, int, int], list[bytes]]
"""Shamir split: ``(secret, threshold, number of shares) -> shares``."""
Combine = Callable[[list[bytes]], bytes]
"""Shamir combine: ``shares (at least threshold) -> secret``."""
SEED, KEY = "seed", "key"
"""Kinds of unmasking shares: of a survivor's self-mask seed, of a dropout's mask key."""


class SecAggAbort(FedrecError):
    """The round cannot finish safely (too few survivors or shares): nothing is released."""


@dataclass(frozen=True)
class SecAggParams:
    """Public parameters of one aggregation.

    Attributes
    ----------
    bits
        Ring ``Z_{2^bits}`` of every coordinate.
    length
        Number of coordinates.
    threshold
        Shamir threshold ``t``: shares needed to rebuild a secret; also the fewest
        survivors the round accepts.
    round_id
        Binds every derived key and ciphertext to this aggregation (no replay).
    """

    bits: int
    length: int
    threshold: int
    round_id: str

    def __post_init__(self) -> None:
        crypto.check_bits(self.bits)
        if self.length < 1 or self.threshold < 2:
            raise ValueError("SecAgg needs length >= 1 and threshold >= 2")

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        """Word type of the ring's residues (:func:`fedrec.secagg.crypto.ring_dtype`)."""
        return crypto.ring_dtype(self.bits)

    @property
    def modulus_mask(self) -> np.unsignedinteger[Any]:
        return self.dtype((1 << self.bits) - 1)

    def residues(self, values: npt.ArrayLike, what: str) -> Ring:
        """``values`` as ring words; refuses a wrong shape or values ``>= 2^bits``."""
        arr = np.asarray(values)
        if arr.shape != (self.length,) or arr.dtype not in (np.uint32, np.uint64):
            raise ValueError(f"{what} must be unsigned integers of shape ({self.length},)")
        if arr.size and int(arr.max()) > int(self.modulus_mask):
            raise ValueError(f"{what} must lie in [0, 2^{self.bits})")
        out: Ring = arr.astype(self.dtype, copy=True)
        return out

    def info(self, purpose: str, a: int, b: int) -> bytes:
        """HKDF ``info``: purpose, round and the (sorted) pair of node ids."""
        lo, hi = sorted((a, b))
        return f"fedrec-secagg/{self.round_id}/{purpose}/{lo}/{hi}".encode()

    def associated(self, sender: int, receiver: int) -> bytes:
        """AES-GCM associated data of a share message from ``sender`` to ``receiver``."""
        return f"fedrec-secagg/{self.round_id}/share/{sender}->{receiver}".encode()

    def to_json(self) -> dict[str, int | str]:
        return {
            "bits": self.bits,
            "length": self.length,
            "threshold": self.threshold,
            "round_id": self.round_id,
        }


def add_mod(total: Ring, term: Ring, params: SecAggParams, *, sign: int = 1) -> None:
    """``total += sign * term (mod 2^bits)``, in place, in ring words (unsigned
    wrap-around mod ``2^32`` / ``2^64``, then the low ``bits`` kept)."""
    if sign >= 0:
        np.add(total, term, out=total)
    else:
        np.subtract(total, term, out=total)
    np.bitwise_and(total, params.modulus_mask, out=total)


def _pair_seed(params: SecAggParams, private: bytes, peer_public: bytes, u: int, v: int) -> bytes:
    return crypto.agree(private, peer_public, params.info("mask", u, v))


class _Masks:
    """Adds AES-CTR masks into ``total`` as raw words through one scratch buffer
    (:func:`fedrec.secagg.crypto.mask_words`); :meth:`reduce` takes the residues mod
    ``2^bits`` once at the end, which equals reducing every mask first."""

    def __init__(self, total: Ring, params: SecAggParams) -> None:
        self.total, self.params = total, params
        self.scratch: Ring = np.empty(params.length, np.dtype(params.dtype).newbyteorder("<"))

    def add(self, seed: bytes, sign: int) -> None:
        words = crypto.mask_words(seed, self.params.length, self.params.bits, out=self.scratch)
        (np.add if sign >= 0 else np.subtract)(self.total, words, out=self.total)

    def reduce(self) -> Ring:
        np.bitwise_and(self.total, self.params.modulus_mask, out=self.total)
        return self.total


@dataclass
class Participant:
    """One device's side of SecAgg+; :meth:`to_json` / :meth:`from_json` keep it between
    messages (it holds secrets: a device keeps it in its own memory, never uploads it)."""

    node: int
    params: SecAggParams
    enc_private: bytes = field(
        default_factory=lambda: crypto.private_bytes(crypto.new_private_key())
    )
    mask_private: bytes = field(
        default_factory=lambda: crypto.private_bytes(crypto.new_private_key())
    )
    seed: bytes = field(default_factory=crypto.new_seed)
    stage: str = "new"
    neighbours: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    inbox: dict[int, bytes] = field(default_factory=dict)

    # stage 1
    def advertise(self) -> tuple[bytes, bytes]:
        """The public keys ``(enc, mask)``."""
        self._expect("new", "advertise")
        self.stage = "advertised"
        return (
            crypto.public_bytes(crypto.private_from_bytes(self.enc_private)),
            crypto.public_bytes(crypto.private_from_bytes(self.mask_private)),
        )

    # stage 2
    def share_keys(
        self, neighbours: Mapping[int, tuple[bytes, bytes]], split: Split
    ) -> dict[int, bytes]:
        """Encrypted Shamir shares of ``mask`` private key and ``b``, one per neighbour."""
        self._expect("advertised", "share keys")
        peers = sorted(int(v) for v in neighbours if int(v) != self.node)
        if len(peers) < self.params.threshold:
            raise SecAggAbort(
                f"node {self.node} has {len(peers)} neighbours, fewer than the threshold "
                f"{self.params.threshold}",
                where="secagg share-keys",
                fix="lower secagg.threshold or raise secagg.neighbours",
            )
        self.neighbours = {v: (bytes(neighbours[v][0]), bytes(neighbours[v][1])) for v in peers}
        t, n = self.params.threshold, len(peers)
        key_shares, seed_shares = split(self.mask_private, t, n), split(self.seed, t, n)
        out: dict[int, bytes] = {}
        for v, ks, ss in zip(peers, key_shares, seed_shares, strict=True):
            key = crypto.agree(
                self.enc_private, self.neighbours[v][0], self.params.info("enc", self.node, v)
            )
            body = json.dumps({"from": self.node, "to": v, KEY: ks.hex(), SEED: ss.hex()}).encode()
            out[v] = crypto.encrypt(key, body, self.params.associated(self.node, v))
        self.stage = "shared"
        return out

    # stage 3
    def masked_input(self, value: npt.ArrayLike, inbox: Mapping[int, bytes]) -> Ring:
        """``y_u``: the input plus self mask plus pairwise masks with every sender in ``inbox``."""
        self._expect("shared", "masked input")
        out = self.params.residues(value, "the input")
        senders = sorted(int(v) for v in inbox)
        unknown = [v for v in senders if v not in self.neighbours]
        if unknown:
            raise SecAggAbort(
                f"shares from non-neighbours {unknown[:5]}", where="secagg masked-input"
            )
        if len(senders) < self.params.threshold:
            raise SecAggAbort(
                f"only {len(senders)} neighbours shared keys, fewer than the threshold "
                f"{self.params.threshold}",
                where="secagg masked-input",
            )
        self.inbox = {v: bytes(inbox[v]) for v in senders}
        for v in senders:  # authenticate now: a bad share aborts before any upload
            self._open(v)
        masks = _Masks(out, self.params)
        masks.add(self.seed, 1)
        for v in senders:
            seed = _pair_seed(self.params, self.mask_private, self.neighbours[v][1], self.node, v)
            masks.add(seed, 1 if self.node < v else -1)
        self.stage = "masked"
        return masks.reduce()

    # stage 4
    def unmask(self, survivors: Sequence[int]) -> dict[int, tuple[str, bytes]]:
        """For each neighbour that shared with this node: its seed share if it survived,
        its mask-key share if it dropped. Answered once per round."""
        self._expect("masked", "unmask")
        alive = {int(v) for v in survivors}
        if self.node not in alive:
            raise SecAggAbort(
                f"node {self.node} is not among the survivors it was sent", where="secagg unmask"
            )
        if len(alive) < self.params.threshold:
            raise SecAggAbort(
                f"{len(alive)} survivors, fewer than the threshold {self.params.threshold}",
                where="secagg unmask",
            )
        out: dict[int, tuple[str, bytes]] = {}
        for v in self.inbox:
            body = self._open(v)
            kind = SEED if v in alive else KEY
            out[v] = (kind, bytes.fromhex(body[kind]))
        self.stage = "done"  # never answer twice: a second request could ask for both kinds
        return out

    def _open(self, v: int) -> dict[str, str]:
        key = crypto.agree(
            self.enc_private, self.neighbours[v][0], self.params.info("enc", v, self.node)
        )
        body = json.loads(crypto.decrypt(key, self.inbox[v], self.params.associated(v, self.node)))
        if body.get("from") != v or body.get("to") != self.node:
            raise SecAggAbort(f"share message from {v} names the wrong nodes", where="secagg")
        return dict(body)

    def _expect(self, stage: str, what: str) -> None:
        if self.stage != stage:
            raise SecAggAbort(
                f"{what} requested in stage {self.stage!r} (expected {stage!r})",
                where=f"secagg node {self.node}",
            )

    def to_json(self) -> str:
        """The node's secret state (kept on the device between messages)."""
        return json.dumps(
            {
                "node": self.node,
                "params": self.params.to_json(),
                "stage": self.stage,
                "enc_private": self.enc_private.hex(),
                "mask_private": self.mask_private.hex(),
                "seed": self.seed.hex(),
                "neighbours": {str(v): [a.hex(), b.hex()] for v, (a, b) in self.neighbours.items()},
                "inbox": {str(v): c.hex() for v, c in self.inbox.items()},
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Participant:
        d = json.loads(text)
        p = d["params"]
        return cls(
            node=int(d["node"]),
            params=SecAggParams(
                int(p["bits"]), int(p["length"]), int(p["threshold"]), str(p["round_id"])
            ),
            enc_private=bytes.fromhex(d["enc_private"]),
            mask_private=bytes.fromhex(d["mask_private"]),
            seed=bytes.fromhex(d["seed"]),
            stage=str(d["stage"]),
            neighbours={
                int(v): (bytes.fromhex(a), bytes.fromhex(b))
                for v, (a, b) in d["neighbours"].items()
            },
            inbox={int(v): bytes.fromhex(c) for v, c in d["inbox"].items()},
        )


class Aggregator:
    """The server's side: routes keys and ciphertexts, keeps one running masked sum
    (each upload is added and dropped), then removes the masks.

    Parameters
    ----------
    params
        The aggregation's public parameters.
    graph
        Neighbours of every node (:func:`fedrec.secagg.graph.harary_graph`).
    """

    def __init__(self, params: SecAggParams, graph: Mapping[int, Sequence[int]]) -> None:
        self.params = params
        self.graph = {int(u): [int(v) for v in vs] for u, vs in graph.items()}
        self.keys: dict[int, tuple[bytes, bytes]] = {}
        self.outbox: dict[int, dict[int, bytes]] = {}  # receiver -> sender -> ciphertext
        self.shared: set[int] = set()
        self.masked: set[int] = set()
        self.total: Ring = np.zeros(params.length, dtype=params.dtype)
        self.shares: dict[int, dict[str, list[bytes]]] = {}

    # stage 1
    def add_keys(self, node: int, enc_public: bytes, mask_public: bytes) -> None:
        if node not in self.graph or len(enc_public) != 32 or len(mask_public) != 32:
            raise ValueError(f"bad key advertisement from node {node}")
        self.keys[node] = (bytes(enc_public), bytes(mask_public))

    def neighbour_keys(self, node: int) -> dict[int, tuple[bytes, bytes]]:
        """The public keys of ``node``'s neighbours that advertised (``N(u) ∩ U1``)."""
        return {v: self.keys[v] for v in self.graph[node] if v in self.keys}

    # stage 2
    def add_ciphertexts(self, node: int, ciphertexts: Mapping[int, bytes]) -> None:
        expected = set(self.neighbour_keys(node))
        if node not in self.keys or set(ciphertexts) != expected:
            raise ValueError(f"node {node} must send one ciphertext per advertised neighbour")
        for v, c in ciphertexts.items():
            self.outbox.setdefault(int(v), {})[node] = bytes(c)
        self.shared.add(node)

    def inbox(self, node: int) -> dict[int, bytes]:
        """Ciphertexts for ``node`` from neighbours that finished sharing (``N(u) ∩ U2``)."""
        return {v: c for v, c in self.outbox.get(node, {}).items() if v in self.shared}

    # stage 3
    def add_masked(self, node: int, masked: npt.ArrayLike) -> None:
        """Add one masked input to the running sum (the upload itself is not kept)."""
        if node not in self.shared or node in self.masked:
            raise ValueError(f"node {node} may not send a masked input")
        add_mod(self.total, self.params.residues(masked, "a masked input"), self.params)
        self.masked.add(node)

    def survivors(self) -> list[int]:
        """``U3``, sent to every survivor; refuses below the threshold."""
        if len(self.masked) < self.params.threshold:
            raise SecAggAbort(
                f"{len(self.masked)} devices sent masked inputs, fewer than the threshold "
                f"{self.params.threshold}: nothing is released",
                where="secagg",
                fix="rerun with more devices online or a lower secagg.threshold",
            )
        return sorted(self.masked)

    # stage 4
    def add_shares(self, node: int, shares: Mapping[int, tuple[str, bytes]]) -> None:
        if node not in self.masked:
            raise ValueError(f"node {node} did not survive; its shares are not needed")
        for v, (kind, share) in shares.items():
            expect = SEED if v in self.masked else KEY
            if kind != expect or node not in self.graph.get(int(v), []):
                raise ValueError(f"node {node} sent an unexpected {kind} share for {v}")
            self.shares.setdefault(int(v), {SEED: [], KEY: []})[kind].append(bytes(share))

    def unmasked_sum(self, combine: Combine) -> Ring:
        """``sum_{u in U3} x_u (mod 2^bits)``; :class:`SecAggAbort` if a secret cannot be
        rebuilt (fewer than ``t`` shares)."""
        t = self.params.threshold
        masks = _Masks(self.total.copy(), self.params)
        for u in sorted(self.masked):
            shares = self.shares.get(u, {}).get(SEED, [])
            if len(shares) < t:
                raise SecAggAbort(
                    f"{len(shares)} shares of survivor {u}'s self mask, fewer than {t}: "
                    "nothing is released",
                    where="secagg unmask",
                )
            masks.add(combine(shares[:t]), -1)
        for v in sorted(self.shared - self.masked):
            partners = [u for u in self.graph[v] if u in self.masked]
            if not partners:
                continue
            shares = self.shares.get(v, {}).get(KEY, [])
            if len(shares) < t:
                raise SecAggAbort(
                    f"{len(shares)} shares of dropped node {v}'s mask key, fewer than {t}: "
                    "nothing is released",
                    where="secagg unmask",
                )
            private = combine(shares[:t])
            public = crypto.public_bytes(crypto.private_from_bytes(private))
            if public != self.keys[v][1]:
                raise SecAggAbort(
                    f"rebuilt mask key of node {v} does not match its public key",
                    where="secagg unmask",
                )
            for u in partners:  # u added sign(u, v) PRG(s_uv): take it out
                seed = _pair_seed(self.params, private, self.keys[u][1], u, v)
                masks.add(seed, -1 if u < v else 1)
        return masks.reduce()


__all__ = [
    "KEY",
    "SEED",
    "Aggregator",
    "Combine",
    "Participant",
    "SecAggAbort",
    "SecAggParams",
    "Split",
    "add_mod",
]
