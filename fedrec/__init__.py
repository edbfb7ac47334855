"""fedrec: federated, privacy-preserving recommendation.

The library core: data, models, local training, privacy accounting, metrics and
baselines. It never imports Flower; the apps in ``clients/`` and ``server/`` wire
these pure functions into Flower.
"""

__version__ = "0.1.0"
