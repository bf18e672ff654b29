"""The docs say what the code does (issue 12.11): documented defaults and error codes are
read from both the docs and the code, and compared; nothing here lists them by hand."""
from __future__ import annotations

import ast
import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from core.runtime.config import SignerConfig
from core.wire.protocol import ERROR_CODES
from tools.client import cli as client_cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CODE_RE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


# -- configuration defaults ------------------------------------------------------------------

def code_keys(cls: type, prefix: str = "") -> dict[str, typing.Any]:
    """Dotted key -> default (dataclasses.MISSING when required), for every field of the
    configuration dataclasses, nested ones and lists of them (`issuers[].id`) included."""
    keys: dict[str, typing.Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        key = f"{prefix}{f.name}"
        if f.default is not dataclasses.MISSING:
            keys[key] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            keys[key] = f.default_factory()  # type: ignore[misc]
        else:
            keys[key] = dataclasses.MISSING
        hint = hints[f.name]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
        for inner in typing.get_args(hint) if optional else (hint,):
            if typing.get_origin(inner) is list:
                inner = typing.get_args(inner)[0]
                if dataclasses.is_dataclass(inner):
                    keys.update(code_keys(inner, f"{key}[]."))
            elif dataclasses.is_dataclass(inner):
                keys.update(code_keys(inner, f"{key}."))
    return keys


def documented_keys() -> dict[str, str]:
    text = (DOCS / "configuration.md").read_text()
    text = text[text.index("## Keys"):text.index("## Relative paths")]
    keys = {}
    for m in re.finditer(r"^\| `([a-z_\[\].0-9]+)` \| ([^|]+) \| ([^|]+) \|", text, re.MULTILINE):
        keys[m.group(1)] = m.group(3).strip()
        # "list of `{node_id, key}`": the entries' keys, required, described in the row
        inline = re.fullmatch(r"list of `\{([a-z_, ]+)\}`", m.group(2).strip())
        for name in inline.group(1).split(", ") if inline else ():
            keys[f"{m.group(1)}[].{name}"] = "required"
    return keys


def documented_value(text: str) -> typing.Any:
    """The default a table cell states, or NotImplemented when it is prose (a computed
    default such as `null = 2 × lifetime_days` is compared by its first word)."""
    word = re.split(r"[ (]", text.strip(), maxsplit=1)[0].strip("`\"")
    if word.startswith("required"):
        return dataclasses.MISSING
    if word == "null":
        return None
    if word in ("true", "false"):
        return word == "true"
    if word == "[]":
        return []
    if re.fullmatch(r"-?\d+", word):
        return int(word)
    if re.fullmatch(r"-?\d+\.\d*", word):
        return float(word)
    if text.strip().startswith("`") and re.fullmatch(r"[A-Za-z0-9_.-]+", word):
        return word
    return NotImplemented


def test_every_configuration_key_is_documented_and_every_documented_one_exists():
    code, docs = code_keys(SignerConfig), documented_keys()
    assert set(code) == set(docs), {"undocumented": sorted(set(code) - set(docs)),
                                    "not in the code": sorted(set(docs) - set(code))}


def test_documented_configuration_defaults_are_the_code_defaults():
    code, docs = code_keys(SignerConfig), documented_keys()
    wrong, compared = {}, 0
    for key, cell in docs.items():
        stated = documented_value(cell)
        if stated is NotImplemented or key not in code:
            continue
        actual = code[key]
        if dataclasses.is_dataclass(actual):
            continue  # a section: "all defaults"
        compared += 1
        same = stated is actual if stated in (None, dataclasses.MISSING) or isinstance(stated, bool) \
            else stated == actual and type(stated) is type(actual)
        if not same:
            wrong[key] = (cell, actual)
    assert not wrong, wrong
    assert compared >= 25, compared  # the parser still reads the tables


# -- the client's --timeout ------------------------------------------------------------------

def test_documented_client_timeout_is_the_code_default():
    # No single default: quick commands (health, ca-info) give up sooner than the others.
    assert client_cli.build_parser().parse_args(["--port", "x", "health"]).timeout is None
    quick, other = client_cli.default_timeout("health"), client_cli.default_timeout("sign-x509")
    assert client_cli.default_timeout("ca-info") == quick
    text = (DOCS / "operations.md").read_text()
    row = re.search(r"^\| `--timeout` \| (\d+(?:\.\d+)?) \(health, ca-info\), (\d+(?:\.\d+)?) \(the others\)",
                    text, re.MULTILINE)
    assert row and (float(row.group(1)), float(row.group(2))) == (quick, other), (row and row.groups())
    synopsis = set(re.findall(r"\[--timeout (\d+(?:\.\d+)?)\]", text))
    assert {float(s) for s in synopsis} <= {quick, other}, synopsis


# -- error codes -----------------------------------------------------------------------------

def documented_error_table() -> dict[str, str]:
    text = (DOCS / "protocol.md").read_text()
    table = text[text.index("## 5. Error codes"):text.index("## 6.")]
    return {m.group(1): m.group(2).strip()
            for m in re.finditer(r"^\| `([a-z_0-9]+)` \| ([^|]+) \|", table, re.MULTILINE)}


def codes_in_source(paths: list[Path]) -> dict[str, set[str]]:
    """Error codes the code can produce, by where they appear: a string as an argument of a
    call to something named *Error / *error (SignerError("bad_request", ...),
    reply_error(id, "handler_unavailable", ...)), a class attribute `code` / `error_code`,
    a "code" key of a dict literal, or a value of a *_CODES mapping. Classes whose code only
    serves as a base for subclasses' codes are not counted unless raised themselves."""
    found: dict[str, set[str]] = {}
    class_codes: dict[str, tuple[str, str]] = {}  # class -> (code, file)
    subclassed: set[str] = set()
    called: set[str] = set()

    def add(code: typing.Any, where: str) -> None:
        if isinstance(code, str) and CODE_RE.fullmatch(code):
            found.setdefault(code, set()).add(where)

    for path in paths:
        where = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                subclassed.update(b.id for b in node.bases if isinstance(b, ast.Name))
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant) and any(
                            isinstance(t, ast.Name) and t.id in ("code", "error_code") for t in stmt.targets):
                        class_codes[node.name] = (stmt.value.value, where)
            elif isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                called.add(name)
                # An exception class takes the code first (SignerError(code, message)); a
                # function such as reply_error(request_id, code, message) anywhere.
                if name.endswith("Error"):
                    if node.args and isinstance(node.args[0], ast.Constant):
                        add(node.args[0].value, where)
                elif name.endswith("_error"):
                    for arg in node.args:
                        if isinstance(arg, ast.Constant):
                            add(arg.value, where)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "code" and isinstance(value, ast.Constant):
                        add(value.value, where)
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("_CODES")
                                                      and t.id != "ERROR_CODES" for t in node.targets):
                if isinstance(node.value, ast.Dict):
                    for value in node.value.values:
                        if isinstance(value, ast.Constant):
                            add(value.value, where)
    for cls, (code, where) in class_codes.items():
        if cls not in subclassed or cls in called:
            add(code, where)
    return found


SIGNER_SOURCES = sorted([*(ROOT / "actors").rglob("*.py"), *(ROOT / "core").rglob("*.py")])


def test_the_error_table_is_exactly_the_codes_the_signer_defines():
    documented = documented_error_table()
    assert set(documented) == set(ERROR_CODES), {"undocumented": set(ERROR_CODES) - set(documented),
                                                 "documented only": set(documented) - set(ERROR_CODES)}
    for code, meaning in ERROR_CODES.items():
        assert documented[code] == meaning, (code, documented[code], meaning)


def test_every_code_the_signer_can_send_is_in_the_table():
    text = (DOCS / "protocol.md").read_text()
    # Codes the docs name as the client library's own, never sent by the signer.
    client_only = set(re.findall(r"`([a-z_]+)` is raised by the client library", text))
    sent = codes_in_source(SIGNER_SOURCES)
    unknown = {code: sorted(where) for code, where in sent.items()
               if code not in ERROR_CODES and code not in client_only}
    assert not unknown, unknown
    # and the table lists no code that nothing in the signer produces
    assert set(ERROR_CODES) <= set(sent), set(ERROR_CODES) - set(sent)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_link_no_file_outside_the_repository(page):
    text = (DOCS / page).read_text()
    assert "/work/shared" not in text, page


def test_every_module_is_named_in_the_source_tree_of_docs_readme():
    """docs/README.md "Source tree": a newcomer finds every module there, in its package's row
    (by its name) or by its path."""
    text = (DOCS / "README.md").read_text()
    tree = text[text.index("## Source tree"):]
    rows = {line.split("`")[1]: line for line in tree.splitlines() if line.startswith("| `")}
    unnamed = []
    for folder in ("core", "actors", "messages", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if path.name == "__init__.py" or f"`{relative}`" in tree:
                continue
            row = rows.get(f"{relative.parent}/", "")
            if f"`{path.name}`" not in row:
                unnamed.append(str(relative))
    assert not unnamed, unnamed
