"""Training checkpoints (``ckn.supervised.run_epochs``): their format and the run's fingerprint."""

from __future__ import annotations

import json

import ckn
from retrieval._src.global_head.model import _fingerprint_arrays

#: The checkpoint that ``ckn.supervised.run_epochs`` writes after every epoch of head training.
CHECKPOINT_FORMAT = ckn.supervised.CheckpointFormat(
    "ckn-global-head-checkpoint",
    2,  # 2: the optimizer state of the one supervised step (optax.apply_if_finite)
    label="global-head",
    config_key="config",
    subject="head",
    mismatch="a checkpoint of another run (differs in: {differs}); start again without resuming",
)


def _fingerprint(maps, labels, validation, cfg, seed) -> dict:
    doc = {
        "config": cfg.to_dict(),
        "seed": seed,
        "data": _fingerprint_arrays(maps.maps, maps.mask, labels)[:16],
        "validation": None
        if validation is None
        else _fingerprint_arrays(validation[0].maps, validation[0].mask, validation[1])[:16],
    }
    return json.loads(json.dumps(doc))
