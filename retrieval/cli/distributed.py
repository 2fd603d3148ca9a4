"""``--distributed``: one copy of a command per process, joined by ``jax.distributed``."""

from __future__ import annotations

import argparse

import ckn
from ckn import InputError
from retrieval.cli.flags import fields_as_flags

# --distributed and the explicit settings of ckn.sharding.Distributed, one flag per field.
_DISTRIBUTED_FLAGS = {
    "coordinator": "--coordinator",
    "num_processes": "--num-processes",
    "process_id": "--process-id",
}


def add_distributed_flags(p: argparse.ArgumentParser) -> None:
    """``--distributed`` and the three settings of :class:`ckn.sharding.Distributed`."""
    g = p.add_argument_group(
        "several processes (hosts)",
        "With --distributed, run one copy of the command per process (same arguments; the "
        "outputs on a folder every process sees): jax.distributed.initialize() joins them, "
        "reading the coordinator, process count and index from the cluster environment "
        "(SLURM, Open MPI, Cloud TPU, Kubernetes) or from the flags below. Each process "
        "describes its slice of the rows on its local devices and writes them into the one "
        "output; the result equals one process's bit for bit.",
    )
    g.add_argument("--distributed", action="store_true", help="join the other processes")
    g.add_argument("--coordinator", help="host:port of process 0 (default: from the cluster)")
    g.add_argument("--num-processes", type=int, help="process count (default: from the cluster)")
    g.add_argument(
        "--process-id", type=int, help="this process's index (default: from the cluster)"
    )


def start_distributed(args: argparse.Namespace) -> tuple[int, int]:
    """Joins the other processes when ``--distributed`` is given; (index, count), else (0, 1).

    Raises:
      InputError: a setting given without ``--distributed``, a bad setting, no way to join.
    """
    given = [flag for field, flag in _DISTRIBUTED_FLAGS.items() if getattr(args, field) is not None]
    if not args.distributed:
        if given:
            raise InputError(f"{given[0]} needs --distributed")
        return 0, 1
    with fields_as_flags(_DISTRIBUTED_FLAGS):
        settings = ckn.sharding.Distributed(
            **{field: getattr(args, field) for field in _DISTRIBUTED_FLAGS}
        )
    return settings.initialize()
