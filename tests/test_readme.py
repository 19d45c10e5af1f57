"""The README says what the software does: its flag tables, its add-on settings tables and its button names are held
to the code here, so a renamed flag, a changed default or range, or a renamed setting or button fails CI.

- Flag tables (header ``| `run latent_paint` flag | default | meaning |``, ``| `serve` flag | …``; ``run a|b|c`` for
  flags several pipelines share): every flag exists on that command's parser; a stated default equals the config
  field's default (the CLI's flags are made from the configs) or argparse's; a range ``(low–high)`` in the meaning
  equals the field's bounds. Every flag of every command appears somewhere in the README.
- Settings tables (header ``| setting | default | meaning |``): every row names a property of the add-on's scene
  settings or preferences by its UI name, with that property's default (enum defaults by their label, pointers as
  *none*, empty strings as *empty*, booleans as *on*/*off*) and range; every such property has a row.
- Bold names in *Use it in Blender* are the labels of real operators or panels.

bpy-free: the add-on's property declarations are read from their source with :mod:`ast`.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

from backend.cli import build_parser
from backend.params import describe_config
from backend.pipelines import PIPELINES
from blender_addon.core import fields, tasks

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ADDON = ROOT / "blender_addon"
SETTINGS_CLASSES = {"properties.py": "LATENTFORGE_PG_settings", "preferences.py": "LATENTFORGE_AP_preferences"}
NUMBER = r"[−-]?\d+(?:\.\d+)?(?:e[−-]?\d+)?"
BLENDER_OWN_BUTTONS = {"Open"}
"""Buttons Blender draws itself (``template_ID``'s Open), named in the README."""
ADDON_TAB = "LatentForge"


# ------------------------------------------------------------------------------------------------- README tables

def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def readme_tables() -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table of the README as ``(header cells, rows of cells)``."""
    tables, lines = [], README.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s|:-]+\|$", lines[i + 1]):
            header, rows = _cells(lines[i]), []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            tables.append((header, rows))
        else:
            i += 1
    return tables


def _number(text: str) -> float:
    return float(text.replace("−", "-"))


def _range_in(meaning: str) -> tuple[float, float] | None:
    """The ``(low–high)`` range a table's meaning states, if any (e.g. ``(1–16)``, ``(for strength 1; 1–1000)``)."""
    m = re.search(rf"\([^()]*?({NUMBER})–({NUMBER})[^()]*\)", meaning)
    return (_number(m.group(1)), _number(m.group(2))) if m else None


def _same(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


# ------------------------------------------------------------------------------------------------- the CLI

def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


PARSER = build_parser()


def _install_parser() -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location("latentforge_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.build_parser()


def command_parser(words: tuple[str, ...]) -> argparse.ArgumentParser:
    if words == ("install.py",):
        return _install_parser()
    parser = PARSER
    for word in words:
        parser = _subparsers(parser)[word]
    return parser


def all_commands(parser=PARSER, words=()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command as ``(words, parser)``: ``("serve",)``, ``("run", "latent_paint")``, …"""
    found = [(words, parser)]
    for name, sub in _subparsers(parser).items():
        found += all_commands(sub, words + (name,))
    return found


def _config_class(words: tuple[str, ...]):
    if len(words) == 2 and words[0] == "run":
        return PIPELINES[words[1]].config_class
    return None


def flag_tables() -> list[tuple[tuple[str, ...], list[str]]]:
    """``(command words, [flags, default, meaning])`` for every row of every flag table (tables without a default
    column get an empty one); ``run a|b`` rows once per pipeline."""
    out = []
    for header, rows in readme_tables():
        m = re.fullmatch(r"`([^`]+)` flag", header[0])
        if not m:
            continue
        words = m.group(1).split()
        rows = rows if len(header) > 2 and header[1] == "default" else [[r[0], "", r[-1]] for r in rows]
        for last in words[-1].split("|"):
            out += [(tuple(words[:-1] + [last]), row) for row in rows]
    return out


FLAG_ROWS = flag_tables()


def _flags_of(cell: str) -> list[tuple[str, bool]]:
    """``(flag, negatable)`` named in a flag cell: ``--seed``, ``--[no-]include-ends``, ``--mesh FILE``, ``-q``."""
    return [(m.group(1) + m.group(3), bool(m.group(2)))
            for m in re.finditer(r"(?<![\w-])(--?)(\[no-\])?([a-z0-9][a-z0-9-]*)", cell)]


def test_the_readme_has_flag_tables_for_every_pipeline_and_serve():
    commands = {words for words, _ in FLAG_ROWS}
    assert ("serve",) in commands
    for name in PIPELINES:
        if name != "latent_nerf":  # latent_nerf's flags are named in prose after latent_paint's table
            assert ("run", name) in commands, f"README has no flag table for run {name}"


@pytest.mark.parametrize("words,row", FLAG_ROWS, ids=[" ".join(w) + " " + r[0] for w, r in FLAG_ROWS])
def test_a_flag_table_row_matches_the_parser_and_the_config(words, row):
    parser = command_parser(words)
    config_class = _config_class(words)
    described = describe_config(config_class) if config_class else {}
    flags = _flags_of(row[0])
    assert flags, f"no flag in README cell {row[0]!r}"
    defaults = [d.strip() for d in row[1].split(",")] if len(flags) > 1 and "," in row[1] else [row[1].strip()]
    for i, (flag, negatable) in enumerate(flags):
        action = parser._option_string_actions.get(flag)
        assert action is not None, f"README names {flag} for {' '.join(words)}, the CLI has no such flag"
        if negatable:
            assert "--no-" + flag[2:] in parser._option_string_actions, f"{flag} has no --no- form"
        field = described.get(action.dest)
        default = field["default"] if field else action.default
        stated = defaults[i] if i < len(defaults) else defaults[-1]
        _check_default(" ".join(words) + " " + flag, stated, default)
        stated_range = _range_in(row[2])
        if stated_range and field and len(flags) == 1:
            assert (field["low"], field["high"]) == pytest.approx(stated_range), \
                f"{flag}: README says {stated_range}, the config says [{field['low']}, {field['high']}]"


def _check_default(what: str, stated: str, default) -> None:
    """A flag table's default cell against the real default (blank cells state nothing; computed defaults, None,
    are described in words)."""
    stated = stated.strip("`")
    if not stated or default is None or default is argparse.SUPPRESS:
        return
    if isinstance(default, bool):
        assert stated == ("on" if default else "off"), f"{what}: README says {stated!r}, default is {default}"
    elif isinstance(default, (int, float)) or (isinstance(default, (list, tuple))
                                               and all(isinstance(v, (int, float)) for v in default)):
        values = [_number(v) for v in re.findall(NUMBER, stated)]
        expected = list(default) if isinstance(default, (list, tuple)) else [default]
        assert len(values) == len(expected) and all(_same(a, b) for a, b in zip(values, expected)), \
            f"{what}: README says {stated!r}, default is {default}"
    elif isinstance(default, str):
        assert stated == (default if default else '""'), f"{what}: README says {stated!r}, default is {default!r}"


@pytest.mark.parametrize("words,parser", all_commands()[1:], ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_flag_of_every_command_is_in_the_readme(words, parser):
    missing = [option for action in parser._actions for option in action.option_strings
               if option not in ("-h", "--help", "-v", "-q") and not option.startswith("--no-")
               and not re.search(rf"--(\[no-\])?{re.escape(option[2:])}(?![\w-])", README)]
    assert not missing, f"flags of `{' '.join(words)}` missing from the README: {missing}"


# ------------------------------------------------------------------------------------------------- the add-on

def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _NOT_LITERAL


_NOT_LITERAL = object()


def addon_properties() -> dict[str, dict]:
    """UI name → ``{"prop", "kind", "default", "min", "max", "labels"}`` of the scene settings and preferences,
    read from the source (defaults: literals, ``fields.limits(prop)``, enum item labels; non-literal = computed)."""
    props = {}
    for file, class_name in SETTINGS_CLASSES.items():
        tree = ast.parse((ADDON / file).read_text(encoding="utf-8"))
        tuples = {t.id: _literal(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  for t in node.targets if isinstance(t, ast.Name)}
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
        for node in cls.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.annotation, ast.Call)):
                continue  # bpy properties are annotations: ``prompt: StringProperty(name=…)``
            call = node.annotation
            kind = getattr(call.func, "id", "")
            kw = {k.arg: k.value for k in call.keywords}
            info = {"prop": node.target.id, "kind": kind, "default": None, "min": None, "max": None, "labels": {}}
            if "default" in kw:
                info["default"] = _literal(kw["default"])
            for bound in ("min", "max"):
                if bound in kw:
                    info[bound] = _literal(kw[bound])
            limits = kw.get(None)  # **fields.limits("prop")
            if isinstance(limits, ast.Call) and getattr(limits.func, "attr", "") == "limits":
                setting = fields.SETTINGS_BY_PROP[limits.args[0].value]
                info.update(default=setting.default, min=setting.min, max=setting.max)
            if isinstance(kw.get("items"), ast.Name):
                info["labels"] = {item[0]: item[1] for item in tuples[kw["items"].id]}
            props[_literal(kw["name"])] = info
    return props


PROPS = addon_properties()
SETTING_ROWS = [row for header, rows in readme_tables() if header[0] == "setting" for row in rows]


@pytest.mark.parametrize("row", SETTING_ROWS, ids=[r[0] for r in SETTING_ROWS])
def test_a_settings_table_row_is_a_real_setting_with_its_default_and_range(row):
    name, stated, meaning = row[0], row[1], row[2]
    if name == "Method":  # one per task, made from the task table
        for methods in tasks.TASKS.values():
            assert methods[0].label in stated, f"Method: README's default {stated!r} misses {methods[0].label}"
        return
    assert name in PROPS, f"README setting {name!r} is no add-on setting (they are: {sorted(PROPS)})"
    info = PROPS[name]
    default = info["default"]
    if default is _NOT_LITERAL:  # computed (install config, home folder): the README says where it comes from
        assert re.search(r"config|<home>", stated), f"{name}: computed default, README should say so: {stated!r}"
    elif info["kind"] == "PointerProperty":
        assert stated == "none", f"{name}: README says {stated!r}, a pointer starts as none"
    elif info["kind"] == "EnumProperty":
        assert stated == info["labels"][default], f"{name}: README says {stated!r}, default is {info['labels'][default]!r}"
    elif info["kind"] == "BoolProperty":
        assert stated == ("on" if default else "off"), f"{name}: README says {stated!r}, default is {default}"
    elif info["kind"] == "StringProperty":
        assert stated == ("empty" if default in (None, "") else default), f"{name}: README {stated!r} vs {default!r}"
    else:
        assert _same(_number(re.match(NUMBER, stated).group(0)), default), f"{name}: README {stated!r} vs {default}"
    stated_range = _range_in(meaning)
    if stated_range:
        assert (info["min"], info["max"]) == pytest.approx(stated_range), \
            f"{name}: README says {stated_range}, the setting's range is [{info['min']}, {info['max']}]"


def test_every_add_on_setting_has_a_readme_row():
    named = {row[0] for row in SETTING_ROWS}
    missing = sorted(set(PROPS) - named)
    assert not missing, f"add-on settings missing from the README's settings tables: {missing}"
    assert "Method" in named


def _labels(file: str) -> set[str]:
    tree = ast.parse((ADDON / file).read_text(encoding="utf-8"))
    return {node.value.value for cls in tree.body if isinstance(cls, ast.ClassDef) for node in cls.body
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "bl_label" for t in node.targets)}


def test_bold_names_in_the_blender_section_are_real_buttons_and_panels():
    section = README.split("## Use it in Blender", 1)[1].split("\n## ", 1)[0]
    known = _labels("operators.py") | _labels("panels.py") | BLENDER_OWN_BUTTONS | {ADDON_TAB}
    bold = set(re.findall(r"\*\*([^*]+)\*\*", section))
    assert bold, "no button names found in the README's Blender section"
    unknown = sorted(bold - known)
    assert not unknown, f"README names buttons/panels the add-on does not have: {unknown} (it has: {sorted(known)})"
