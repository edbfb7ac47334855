"""Secure aggregation (SecAgg+, Bell et al., CCS 2020): the server learns only a sum.

Flower-free maths of the protocol: key agreement, authenticated encryption and mask
expansion from the ``cryptography`` package (:mod:`fedrec.secagg.crypto`), the
neighbour graph (:mod:`fedrec.secagg.graph`) and the two roles as state machines
(:mod:`fedrec.secagg.protocol`). Shamir secret sharing is injected by the caller
(the apps pass :mod:`fedrec.secagg.shamir`, pycryptodome's ``Shamir`` in GF(2^128),
the primitive under Flower's wrapper); the package never imports Flower. See
docs/SECAGG.md.
"""
