"""Command-line options made from the settings of the library's config dataclasses.

A library setting is a dataclass field declared with its default, bounds or choices and a
help line in its metadata (``retrieval._src.settings``, read here through
``dataclasses.fields``). :func:`add_settings` makes one option per field: the flag is the
field's name with hyphens (``max_side`` -> ``--max-side``) unless the field declares its own
(``CamConfig.variant`` -> ``--cam-variant``), the argparse ``dest`` is the field's name, the
help ends with the field's default, and the value is left None when the option is not given
(so that a command knows what was given, and the dataclass supplies its one default).
:func:`given` collects the given values for a config; ``flags.fields_as_flags`` turns the
fields a library message names into the command's flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Iterable

#: The metadata key of a setting (``retrieval._src.settings.KEY``).
_KEY = "setting"


def settings_of(cls) -> dict[str, object]:
    """{field name: its setting spec} of a config dataclass (or instance)."""
    return {f.name: f.metadata[_KEY] for f in dataclasses.fields(cls) if _KEY in f.metadata}


def option(name: str, spec=None) -> str:
    """The flag of a field: its setting's declared one, or ``--`` and the name with hyphens."""
    return "--" + ((spec.flag if spec is not None else None) or name.replace("_", "-"))


def _default_text(default, spec) -> str:
    if default is None:
        return spec.none_means
    if isinstance(default, tuple):
        return ",".join(f"{v:.3g}" for v in default)
    return f"{default:g}" if isinstance(default, float) else str(default)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, e.g. 1,0.707,0.5, got {text!r}"
        ) from None


_MARKUP = re.compile(r":\w+:`~?([^`]+)`|``([^`]+)``")


def _attribute_texts(cls) -> dict[str, str]:
    """{field: first sentence of its entry} from the ``Attributes:`` section of a docstring.

    An entry ``a, b: text`` gives both fields the text; Sphinx roles and literals are shown as
    plain text.
    """
    doc = inspect.getdoc(cls) or ""
    lines = doc.split("Attributes:", 1)[1].splitlines()[1:] if "Attributes:" in doc else []
    entries: list[tuple[list[str], str]] = []
    for line in lines:
        if line.strip() and not line.startswith(" "):
            break  # the next section
        stripped = line.strip()
        head = re.match(r"^(\w+(?:, \w+)*): (.*)$", stripped)
        if head and len(line) - len(line.lstrip()) <= 2:
            entries.append((head.group(1).split(", "), head.group(2)))
        elif entries and stripped:
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + stripped)
    out = {}
    for names, text in entries:
        text = _MARKUP.sub(lambda m: m.group(1) or m.group(2), text)
        first = re.split(r"(?<!i\.e\.)(?<!e\.g\.)(?<=\.)\s", text, maxsplit=1)[0].rstrip(".")
        out.update(dict.fromkeys(names, first))
    return out


def _parser_of(annotation: str, flag: str):
    """(argparse type, how a default is shown) for a field annotation (a string)."""
    scalar = {"int": int, "float": float, "str": str}
    if annotation in scalar:
        return scalar[annotation], str
    item = re.fullmatch(r"tuple\[(int|float|str), \.\.\.\]", annotation)
    if item is None:
        raise TypeError(f"{flag}: no flag for a field of type {annotation}")
    convert = scalar[item.group(1)]

    def parse(text: str) -> tuple:
        try:
            return tuple(convert(v) for v in text.split(",") if v != "")
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item.group(1)} values, got {text!r}"
            ) from None

    return parse, lambda v: ",".join(map(str, v))


def _add_plain(group, field: dataclasses.Field, text: str) -> None:
    """The option of a field that is not a setting (no metadata): the type from its
    annotation, the help ``text`` (its docstring entry), the dataclass's default shown."""
    flag = option(field.name)
    parse, show = _parser_of(str(field.type), flag)
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    group.add_argument(
        flag,
        dest=field.name,
        type=parse,
        default=None,
        metavar=field.name.split("_")[-1].upper() if parse in (int, float) else None,
        help=f"{text} (default {show(default)})",
    )


def add_settings(
    group,
    cls,
    names: Iterable[str],
    *,
    defaults=None,
    help=None,
    choices=None,
    metavar=None,
    show_default: bool = True,
) -> None:
    """Adds an option per named setting of ``cls`` (see the module docstring).

    A field that is not a setting (a config without setting metadata, e.g. ``HPatchesConfig``)
    gets its option from its annotation (int, float, str, or a tuple of one of them as
    comma-separated values) and its help from the class docstring's ``Attributes:`` entry,
    with the dataclass's default shown (``choices``, ``metavar`` and ``show_default`` apply to
    settings only).

    Args:
      group: a parser or argument group.
      cls: the config dataclass.
      names: its fields to expose.
      defaults: a config instance whose values the help shows as defaults (default: ``cls``'s
        own, e.g. ``CamDescription().scales`` for CAM's one scale).
      help: {field: help text} replacing the field's own.
      choices: {field: choices} replacing the field's own (``--global``: the pooling heads and
        "cam", the CAM describer).
      metavar: {field: metavar} (default: the flag in capitals).
      show_default: end the help with the default (not for the options that select a mode).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    specs = settings_of(cls)
    texts = None
    for name in names:
        if name not in specs:  # a plain field: its docstring entry for help
            texts = _attribute_texts(cls) if texts is None else texts
            _add_plain(group, fields[name], (help or {}).get(name, texts.get(name, name)))
            continue
        spec = specs[name]
        default = getattr(defaults, name) if defaults is not None else fields[name].default
        text = (help or {}).get(name, spec.help)
        kw: dict = {"dest": name, "default": None}
        flag = option(name, spec)
        if spec.kind == "bool":
            kw.update(action="store_const", const=not default if spec.inverted else True)
            group.add_argument(flag, help=text, **kw)
            continue
        kw["metavar"] = (metavar or {}).get(name) or flag[2:].upper().replace("-", "_")
        if spec.kind == "str" and (choices or {}).get(name, spec.choices) is not None:
            kw["choices"] = (choices or {}).get(name, spec.choices)
            if (metavar or {}).get(name) is None:
                del kw["metavar"]
        elif spec.kind in ("int", "float"):
            kw["type"] = int if spec.kind == "int" else float
        elif spec.kind == "floats":
            kw["type"] = _floats
        if show_default:
            text = f"{text} (default {_default_text(default, spec)})"
        group.add_argument(flag, help=text, **kw)


def given(args: argparse.Namespace, cls, names: Iterable[str] | None = None) -> dict:
    """{field: value} of the settings of ``cls`` given on the command line (not None)."""
    keys = settings_of(cls) if names is None else names
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def flag_names(*classes) -> dict[str, str]:
    """{field name: flag} of every setting of the given config classes."""
    out = {}
    for cls in classes:
        out.update({n: option(n, s) for n, s in settings_of(cls).items()})
    return out
