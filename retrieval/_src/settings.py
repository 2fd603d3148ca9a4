"""One name, one default and one check per setting: dataclass fields that describe themselves.

A setting is a field of a frozen config dataclass declared with :func:`setting`: its default, its
bounds or choices and a one-line help live in the field's metadata. The dataclass's
``__post_init__`` calls :func:`check_settings`, which checks every such field and raises
:class:`ckn.InputError` naming the FIELD (``max_side must be None or an int >= 16, got 0``); the
command line builds its flags from the same metadata (``retrieval/cli/fields.py``): the flag is
the field's name with hyphens (``max_side`` -> ``--max-side``), its default and bounds are the
field's, and a message that names a field is translated to the flag there. A field whose name
alone would be ambiguous on a command that hosts several configs declares its flag once, here
(``CamConfig.variant``: option "cam-variant").

Examples:
  >>> @dataclasses.dataclass(frozen=True)
  ... class Sizes:
  ...     max_side: int | None = setting(1024, minimum=16, optional=True, help="long side")
  ...     def __post_init__(self):
  ...         check_settings(self)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

from ckn import InputError

#: The metadata key of a setting's :class:`Spec`.
KEY = "setting"


class Spec(NamedTuple):
    """What a setting accepts (the metadata of a :func:`setting` field).

    Attributes:
      kind: "int", "float", "str", "bool" or "floats" (a non-empty tuple of numbers).
      help: one line for the command line's help.
      minimum: the smallest accepted number (inclusive), or None.
      positive: numbers must be > 0 (for floats: p, scales).
      choices: the accepted strings, or None.
      optional: None is accepted (it means what the help says: "none", "keep", "auto").
      zero_is_none: 0 is accepted and stored as None (``pca_dim = 0``: no PCA).
      flag: the command-line option's name (without the leading dashes) when it is not the
        field's name with hyphens: "cam-variant" for ``CamConfig.variant``.
      inverted: the option of a bool stores False ("no-whiten" sets ``pca_whiten=False``).
      none_means: what None means, in a word or two ("none", "keep", "no shrink"), for the
        help's default.
    """

    kind: str
    help: str = ""
    minimum: float | None = None
    positive: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False
    zero_is_none: bool = False
    flag: str | None = None
    inverted: bool = False
    none_means: str = "none"


def setting(default: Any, *, help: str = "", kind: str | None = None, **spec) -> Any:
    """A dataclass field with its :class:`Spec` (kind inferred from the default when not given).

    Args:
      default: the one default of the setting (a tuple for "floats").
      help: one line for ``--help``.
      kind: as :class:`Spec` (default: from ``default``'s type).
      **spec: the other :class:`Spec` attributes.
    """
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float", str: "str", tuple: "floats"}[
            type(default)
        ]
    return dataclasses.field(default=default, metadata={KEY: Spec(kind, help, **spec)})


def spec_of(field: dataclasses.Field) -> Spec | None:
    """The :class:`Spec` of a dataclass field, or None for a field that is not a setting."""
    return field.metadata.get(KEY)


def specs(cls) -> dict[str, Spec]:
    """{field name: :class:`Spec`} of the settings of a config dataclass (or instance)."""
    return {f.name: s for f in dataclasses.fields(cls) if (s := spec_of(f)) is not None}


def _bound(spec: Spec) -> str:
    if spec.positive:
        return " > 0"
    return "" if spec.minimum is None else f" >= {spec.minimum:g}"


def describe_spec(spec: Spec) -> str:
    """What a setting accepts, in words: "None or an int >= 16", "one of none, pca, learned"."""
    what = {
        "int": f"an int{_bound(spec)}",
        "float": f"a finite number{_bound(spec)}",
        "str": "one of " + ", ".join(spec.choices or ()),
        "bool": "True or False",
        "floats": f"one or more distinct numbers{_bound(spec)}",
    }[spec.kind]
    return ("None or " if spec.optional else "") + what


def _number_ok(v, spec: Spec) -> bool:
    if spec.positive and not v > 0:
        return False
    return spec.minimum is None or v >= spec.minimum


def check_value(name: str, value: Any, spec: Spec) -> Any:
    """The value of setting ``name``, checked (and normalized: floats, tuples, 0 -> None).

    Raises:
      InputError: "``name`` must be ``describe_spec(spec)``, got ``value``".
    """
    if spec.zero_is_none and value == 0 and not isinstance(value, bool):
        return None
    if value is None and spec.optional:
        return None
    bad = InputError(f"{name} must be {describe_spec(spec)}, got {value!r}")
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not _number_ok(value, spec):
            raise bad
        return value
    if spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value) or not _number_ok(value, spec):
            raise bad
        return float(value)
    if spec.kind == "str":
        if spec.choices is not None and value not in spec.choices:
            raise bad
        if not isinstance(value, str):
            raise bad
        return value
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    try:  # floats
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise bad from None
    if not values or not all(math.isfinite(v) and _number_ok(v, spec) for v in values):
        raise bad
    if len(set(values)) != len(values):
        raise InputError(f"{name} has a repeated value: {value!r}")
    return values


def check_settings(config) -> None:
    """Checks (and normalizes in place) every :func:`setting` field of a frozen dataclass.

    Call it first in ``__post_init__``; checks that tie several fields follow it there.
    """
    for name, spec in specs(config).items():
        value = check_value(name, getattr(config, name), spec)
        object.__setattr__(config, name, value)


#: The one default of the long side images are shrunk to (global and local descriptors).
MAX_SIDE = 1024


def whiten_dim_setting(none_means: str):
    """The ``whiten_dim`` field of the evaluation's and the index's configs: one bound, one help;
    ``none_means`` says which dimension each picks when it is None."""
    return setting(
        None, kind="int", minimum=1, optional=True, none_means=none_means,
        help="whitening output dimension",
    )  # fmt: skip


def max_side_setting():
    """The ``max_side`` field of every image config: one default, one bound, one help."""
    return setting(
        MAX_SIDE, kind="int", minimum=16, optional=True, none_means="never shrink",
        help="shrink images whose long side exceeds this many pixels (never enlarged)",
    )  # fmt: skip
