"""HPatches (Balntas et al., CVPR 2017): the release layout, splits, task files and the three tasks.

Modules, one idea each:

* :mod:`.layout`: the ``hpatches-release`` folder layout (read / write a sequence);
* :mod:`.splits`: the official splits (``splits.json``, BSD-2, see ``COPYING``) and ``all``;
* :mod:`.data`: a release opened for a split (:func:`load_hpatches`);
* :mod:`.descriptors`: descriptors from a describe function, the official CSV layout;
* :mod:`.task_files`, :mod:`.task_generation`: verification pairs and retrieval lists, the
  official files, seeded generation for data without them;
* :mod:`.verification`, :mod:`.matching`, :mod:`.retrieval_task`: the three tasks;
* :mod:`.config`, :mod:`.evaluate`: the settings and :func:`evaluate_hpatches`;
* :mod:`.report`: the text table, published figures beside.

The AP and AUC follow the official ``utils/metrics.py``
(:mod:`retrieval._src.metrics.hpatches_ap`).
"""

from retrieval._src.hpatches.config import OFFICIAL_LIST_SIZES, TASK_NAMES, HPatchesConfig
from retrieval._src.hpatches.data import HPatchesData, load_hpatches
from retrieval._src.hpatches.descriptors import (
    describe_hpatches,
    iter_descriptors,
    read_descriptors,
    write_descriptors,
)
from retrieval._src.hpatches.evaluate import HPatchesResult, evaluate_hpatches
from retrieval._src.hpatches.layout import (
    PATCH_SIZE,
    TYPES,
    read_sequence,
    sequence_count,
    write_sequence,
)
from retrieval._src.hpatches.matching import HPatchesMatching
from retrieval._src.hpatches.report import PUBLISHED, format_hpatches
from retrieval._src.hpatches.retrieval_task import HPatchesRetrieval
from retrieval._src.hpatches.splits import SPLIT_NAMES, Split, official_splits
from retrieval._src.hpatches.task_files import (
    HPatchesTasks,
    Pairs,
    PatchList,
    read_tasks,
    write_tasks,
)
from retrieval._src.hpatches.task_generation import generate_tasks
from retrieval._src.hpatches.verification import HPatchesVerification

__all__ = [
    "OFFICIAL_LIST_SIZES",
    "PATCH_SIZE",
    "PUBLISHED",
    "SPLIT_NAMES",
    "TASK_NAMES",
    "TYPES",
    "HPatchesConfig",
    "HPatchesData",
    "HPatchesMatching",
    "HPatchesResult",
    "HPatchesRetrieval",
    "HPatchesTasks",
    "HPatchesVerification",
    "Pairs",
    "PatchList",
    "Split",
    "describe_hpatches",
    "evaluate_hpatches",
    "format_hpatches",
    "generate_tasks",
    "iter_descriptors",
    "load_hpatches",
    "official_splits",
    "read_descriptors",
    "read_sequence",
    "read_tasks",
    "sequence_count",
    "write_descriptors",
    "write_sequence",
    "write_tasks",
]
