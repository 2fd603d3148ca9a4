"""Settings of the HPatches evaluation: which tasks, and how task files are generated."""

from __future__ import annotations

import dataclasses

from ckn import InputError

#: The three HPatches tasks, in the order they are run and reported.
TASK_NAMES = ("verification", "matching", "retrieval")

#: Retrieval list sizes of the official Python benchmark (``utils/tasks.py``, ``at_ranks``):
#: the first k items of [the 5 positives, then the distractors of other sequences].
OFFICIAL_LIST_SIZES = (100, 500, 1000, 5000, 10000, 15000, 20000)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an int >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class HPatchesConfig:
    """HPatches settings.

    Attributes:
      tasks: the tasks to run, some of verification, matching, retrieval (:data:`TASK_NAMES`).
      seed: seed of generated task files (data without official ones).
      n_pairs: generated verification positives; as many intra- and inter-sequence negatives
        (official generator: 1,000,000).
      n_queries, n_distractors: generated retrieval queries and distractors (the official
        files: 10,000 and 20,000); scaled down together, ratio kept, when the test sequences
        hold fewer textured reference patches than both together.
      min_patch_std: generated retrieval queries and distractors are reference patches whose
        gray-level standard deviation exceeds this (official generator: 10).
      list_sizes: retrieval list sizes k, each > 5. Default: the official sizes.
    """

    tasks: tuple[str, ...] = TASK_NAMES
    seed: int = 42
    n_pairs: int = 1_000_000
    n_queries: int = 10_000
    n_distractors: int = 20_000
    min_patch_std: float = 10.0
    list_sizes: tuple[int, ...] = OFFICIAL_LIST_SIZES

    def __post_init__(self):
        tasks = tuple(self.tasks)
        unknown = [t for t in tasks if t not in TASK_NAMES]
        if unknown or not tasks or len(set(tasks)) != len(tasks):
            raise InputError(
                f"tasks must be distinct names among {', '.join(TASK_NAMES)}, got {tasks!r}"
            )
        object.__setattr__(self, "tasks", tuple(t for t in TASK_NAMES if t in tasks))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be an int >= 0, got {self.seed!r}")
        for name in ("n_pairs", "n_queries", "n_distractors"):
            _positive_int(name, getattr(self, name))
        std = self.min_patch_std
        if isinstance(std, bool) or not isinstance(std, int | float) or not 0 <= std < 256:
            raise InputError(f"min_patch_std must be a number in [0, 256), got {std!r}")
        sizes = tuple(self.list_sizes)
        for k in sizes:
            if isinstance(k, bool) or not isinstance(k, int) or k <= 5:
                raise InputError(f"list_sizes must be ints > 5 (5 positives), got {sizes!r}")
        if not sizes or list(sizes) != sorted(set(sizes)):
            raise InputError(f"list_sizes must be increasing and not empty, got {sizes!r}")
        object.__setattr__(self, "list_sizes", sizes)
