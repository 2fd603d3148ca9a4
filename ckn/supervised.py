"""Supervised end-to-end training (stage: fine-tuning a CKN, or any model, on labelled pairs).

The differentiable descriptor (:func:`descriptor_function`, the trainable parts, the
Nystrom map with a stable derivative), the validation split and mAP, the one batch plan
(:func:`group_rows`, :func:`epoch_batches`), the one training step
(:func:`supervised_step`: Adam, a pull towards the start, the learning rate, non-finite
gradients skipped), the checkpointed epoch loop :func:`run_epochs` with its checkpoints,
and the learned projection of the descriptor (:func:`pca_projection`, :func:`with_projection`).
The entry point is :func:`ckn.finetune`; the losses are in :mod:`ckn.losses`.
"""

from ckn._src.batches import EpochBatches, epoch_batches, group_rows
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
from ckn._src.finetune import DEFAULT_MARGINS, LOSSES, SCHEDULES
from ckn._src.projection import PCA_ROWS, pca_projection, with_projection
from ckn._src.supervised_step import (
    pull_towards,
    scale_by_rate,
    step_optimizer,
    supervised_step,
)
from ckn._src.validation import validation_map, validation_split

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoint",
    "CheckpointFormat",
    "DEFAULT_MARGINS",
    "EpochBatches",
    "EpochResult",
    "EpochsConfig",
    "EpochsReport",
    "EpochsRun",
    "LOSSES",
    "PCA_ROWS",
    "SCHEDULES",
    "TRAINABLE_PARTS",
    "descriptor_function",
    "epoch_batches",
    "group_rows",
    "initial_params",
    "load_checkpoint",
    "nystrom_map",
    "pca_projection",
    "pull_towards",
    "run_epochs",
    "save_checkpoint",
    "scale_by_rate",
    "step_optimizer",
    "supervised_step",
    "trainable_parts",
    "validation_map",
    "validation_split",
    "with_projection",
]
