"""Supervised end-to-end training (stage: fine-tuning a CKN, or any model, on labelled pairs).

The differentiable descriptor (:func:`descriptor_function`, the trainable parts, the
Nystrom map with a stable derivative), the validation split and mAP, and the
checkpointed epoch loop :func:`run_epochs` with its checkpoints, and the learned
projection of the descriptor (:func:`pca_projection`, :func:`with_projection`). The entry point is
:func:`ckn.finetune`; the losses are in :mod:`ckn.losses`.
"""

from ckn._src.differentiable import (
    TRAINABLE_PARTS,
    descriptor_function,
    initial_params,
    nystrom_map,
    trainable_parts,
)
from ckn._src.epochs import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointFormat,
    EpochResult,
    EpochsConfig,
    EpochsReport,
    EpochsRun,
    load_checkpoint,
    run_epochs,
    save_checkpoint,
)
from ckn._src.finetune import (
    DEFAULT_MARGINS,
    LOSSES,
    PCA_ROWS,
    SCHEDULES,
    validation_map,
    validation_split,
)
from ckn._src.projection import pca_projection, with_projection

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoint",
    "CheckpointFormat",
    "DEFAULT_MARGINS",
    "EpochResult",
    "EpochsConfig",
    "EpochsReport",
    "EpochsRun",
    "LOSSES",
    "PCA_ROWS",
    "SCHEDULES",
    "TRAINABLE_PARTS",
    "descriptor_function",
    "initial_params",
    "load_checkpoint",
    "nystrom_map",
    "pca_projection",
    "run_epochs",
    "save_checkpoint",
    "trainable_parts",
    "validation_map",
    "validation_split",
    "with_projection",
]
