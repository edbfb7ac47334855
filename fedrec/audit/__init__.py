"""Empirical privacy audit: attacks on what each mode's adversary sees, and epsilon bounds.

Flower-free. Entry point :func:`fedrec.audit.runner.audit_run`; the attacks are in
:mod:`fedrec.audit.attacks` and :mod:`fedrec.audit.membership`, the shadow clients in
:mod:`fedrec.audit.shadow`, the regenerated uploads and releases in
:mod:`fedrec.audit.regenerate`, the Clopper-Pearson bounds in
:mod:`fedrec.audit.lower_bound`. ``fedrec audit RUN_DIR`` wires them to a run directory.
"""
