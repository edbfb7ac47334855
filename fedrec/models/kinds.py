"""The model kinds: one line per model, ``kind -> "module:Class"``.

Design rule: this table is the only list of trained model kinds. A model joins by one
line here and a module whose class carries every fact about it (``fedrec/models/base.py``,
``fedrec/models/trainable.py``); :func:`fedrec.models.registry.model_class` imports the
class lazily. No imports here, so the configuration can validate kinds cheaply.
"""

from __future__ import annotations

MODEL_CLASSES: dict[str, str] = {
    "mf": "fedrec.models.mf:MatrixFactorization",
    "cdae": "fedrec.models.cdae:CDAE",
    "multvae": "fedrec.models.multvae:MultVAE",
    "ials": "fedrec.models.ials:IALS",
    "ncf": "fedrec.models.ncf:NeuMF",
    "lightgcn": "fedrec.models.lightgcn:LightGCN",
    "sasrec": "fedrec.models.sasrec:SASRec",
}
"""Model kind -> ``"module:Class"`` of its
:class:`~fedrec.models.trainable.TrainableRecommender`."""
