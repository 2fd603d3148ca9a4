"""The HPatches benchmark in one call: descriptors (or a describe function) -> the three tasks.

Figures equal the official Python benchmark's (``hpatches_eval.py``, ``utils/tasks.py``) on
the same descriptors and task files; ``tests/test_hpatches.py`` runs the official code on
written data and compares every figure.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

import numpy as np

from ckn import InputError
from retrieval._src.hpatches.config import HPatchesConfig
from retrieval._src.hpatches.data import HPatchesData
from retrieval._src.hpatches.descriptors import check_descriptors, describe_hpatches
from retrieval._src.hpatches.layout import LEVELS, sequence_kind
from retrieval._src.hpatches.matching import HPatchesMatching, matching_task
from retrieval._src.hpatches.retrieval_task import HPatchesRetrieval, retrieval_task
from retrieval._src.hpatches.task_files import HPatchesTasks, check_tasks, read_tasks
from retrieval._src.hpatches.task_generation import generate_tasks
from retrieval._src.hpatches.verification import NEGATIVES, HPatchesVerification, verification_task


def _mean(x) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if x.size else None


def _by_kind(values: np.ndarray, sequences) -> dict[str, float | None]:
    kinds = np.array([sequence_kind(s) for s in sequences])
    return {k: _mean(values[kinds == k]) for k in ("illum", "view")}


def matching_summary(m: HPatchesMatching) -> dict:
    """JSON-ready matching figures: mAP overall, per level, per sequence kind; fractions."""
    levels = m.ap.mean(axis=(0, 2))
    return {
        "map": float(levels.mean()),
        **{name: float(v) for name, v in zip(LEVELS, levels)},
        **_by_kind(m.ap, m.sequences),
        "nn_accuracy": float(m.accuracy.mean()),
        "sequences": len(m.sequences),
    }


def retrieval_summary(r: HPatchesRetrieval, n_distractors: int) -> dict:
    """JSON-ready retrieval figures: the mean over list sizes and levels, and the table."""
    table = r.ap.mean(axis=0)  # (3, K)
    return {
        "map": float(table.mean()),
        **{name: float(v) for name, v in zip(LEVELS, table.mean(axis=1))},
        **_by_kind(r.ap, r.queries.seq),
        "by_list_size": {
            str(k): {
                **{name: float(table[i, c]) for i, name in enumerate(LEVELS)},
                "mean": float(table[:, c].mean()),
            }
            for c, k in enumerate(r.list_sizes)
        },
        "queries": int(r.ap.shape[0]),
        "distractors": int(n_distractors),
    }


def verification_summary(v: HPatchesVerification) -> dict:
    """JSON-ready verification figures: balanced AUC and imbalanced AP, inter / intra."""

    def protocol(values: np.ndarray, metric: str) -> dict:
        return {
            "metric": metric,
            "mean": float(values.mean()),
            **{
                kind: {
                    **{name: float(values[i, j]) for i, name in enumerate(LEVELS)},
                    "mean": float(values[:, j].mean()),
                }
                for j, kind in enumerate(NEGATIVES)
            },
        }

    return {
        "balanced": protocol(v.auc, "auc"),
        "imbalanced": protocol(v.ap, "ap"),
        "pairs": v.n_pairs,
    }


@dataclasses.dataclass(frozen=True)
class HPatchesResult:
    """The figures of the tasks run (None for the others).

    Attributes:
      split: the split name.
      task_source: where the task definitions came from (a folder, "generated (seed S)",
        or "given").
      verification, matching, retrieval: per-task figures.
      n_distractors: the retrieval distractor list length.
    """

    split: str
    task_source: str
    verification: HPatchesVerification | None = None
    matching: HPatchesMatching | None = None
    retrieval: HPatchesRetrieval | None = None
    n_distractors: int = 0

    def as_dict(self) -> dict:
        """JSON-ready summary: ``{"matching": {"map": .., "easy": .., ...}, ...}``, fractions."""
        out: dict = {"split": self.split, "tasks": self.task_source}
        if self.verification is not None:
            out["verification"] = verification_summary(self.verification)
        if self.matching is not None:
            out["matching"] = matching_summary(self.matching)
        if self.retrieval is not None:
            out["retrieval"] = retrieval_summary(self.retrieval, self.n_distractors)
        return out


def resolve_tasks(
    tasks: HPatchesTasks | str | os.PathLike | None, data: HPatchesData, config: HPatchesConfig
) -> tuple[HPatchesTasks, str]:
    """The task definitions and their source: read from a folder, generated, or checked as given."""
    if tasks is None:
        return generate_tasks(data, config), f"generated (seed {config.seed})"
    if isinstance(tasks, HPatchesTasks):
        check_tasks(tasks, data, config.tasks)
        return tasks, "given"
    if isinstance(tasks, str | os.PathLike):
        return read_tasks(tasks, data, config.tasks), f"files in {os.fspath(tasks)}"
    raise InputError(f"tasks must be HPatchesTasks, a folder or None, got {type(tasks).__name__}")


def evaluate_hpatches(
    descriptors_or_describe: Mapping[str, np.ndarray] | Callable[[np.ndarray], np.ndarray],
    data: HPatchesData,
    tasks: HPatchesTasks | str | os.PathLike | None = None,
    config: HPatchesConfig | None = None,
) -> HPatchesResult:
    """Runs the HPatches tasks of ``config`` on the test sequences of ``data``'s split.

    Task definitions are checked (or generated) before any descriptor is computed.

    Args:
      descriptors_or_describe: a dict from test sequence name to (16, N, D) descriptors
        (e.g. ``read_descriptors``), or a function (M, 65, 65) uint8 -> (M, D) applied to each
        sequence in turn.
      data: the release and split (``load_hpatches``).
      tasks: definitions (``HPatchesTasks``), a folder of official-layout task files for the
        split (e.g. the benchmark's ``tasks/``), or None to generate them (``config.seed``).
      config: the settings (default: ``HPatchesConfig()``).

    Returns:
      The figures; ``.as_dict()`` for JSON.

    Raises:
      InputError: bad task files or definitions, missing or bad descriptors.
    """
    config = HPatchesConfig() if config is None else config
    if not isinstance(config, HPatchesConfig):
        raise InputError(f"config must be an HPatchesConfig, got {type(config).__name__}")
    defs, source = resolve_tasks(tasks, data, config)
    if callable(descriptors_or_describe):
        descriptors = describe_hpatches(data, descriptors_or_describe)
    elif isinstance(descriptors_or_describe, Mapping):
        descriptors = descriptors_or_describe
    else:
        raise InputError(
            "descriptors_or_describe must be a dict of (16, N, D) descriptors or a function"
        )
    descriptors = check_descriptors(descriptors, data)
    found = {}
    for name in config.tasks:
        found[name] = TASKS[name](descriptors, data, defs, config)
    n_distractors = 0 if defs.distractors is None else int(defs.distractors.seq.shape[0])
    return HPatchesResult(data.split.name, source, **found, n_distractors=n_distractors)


#: Task name -> runner(descriptors, data, tasks, config).
TASKS = {
    "verification": lambda d, data, t, c: verification_task(d, t),
    "matching": lambda d, data, t, c: matching_task(d, data.sequences),
    "retrieval": lambda d, data, t, c: retrieval_task(d, t.queries, t.distractors, c.list_sizes),
}
