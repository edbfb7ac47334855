"""Flower-free federated core: client functions, server aggregation, reference loop."""
