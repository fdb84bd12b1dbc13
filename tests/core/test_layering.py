"""The layering, read from the source with `ast` (so a new import that breaks it fails here).

- the core (groundwatch/) imports no role, and neither the composition roots;
- a role (ingest, loaders, consumers, models) imports only the core and itself;
- demo/ and bench/ are the declared composition roots: they may import everything;
- ``os.environ`` (and ``os.getenv``) is read only in groundwatch/settings.py and the server
  launcher groundwatch/server.py;
- no Redis key name (a ``gw:`` literal) is spelled outside groundwatch/keys.py (docstrings,
  which document the layout, are not code).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

import pytest

from groundwatch.settings import REPO_ROOT

CORE = "groundwatch"
ROLES = ("ingest", "loaders", "consumers", "models")
ROOTS = ("demo", "bench")
PACKAGES = (CORE, *ROLES, *ROOTS)

ENV_READERS = {
    "groundwatch/settings.py",  # the one Settings object
    "groundwatch/server.py",  # the server launcher passes its environment to redis-server
}
# Composition roots that copy the environment into a child process's, unread: the bench starts
# servers, consumers and competitors as subprocesses, which must inherit PATH, LD_* and the like.
ENV_PASSED_TO_CHILDREN = {"bench/common.py", "bench/engine.py", "bench/pipeline.py", "bench/alternatives.py"}
KEYS_MODULE = "groundwatch/keys.py"


def sources() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).as_posix()
            yield rel, ast.parse(path.read_text(), filename=rel)


def imported_packages(tree: ast.Module) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & set(PACKAGES)


def allowed_imports(rel: str) -> set[str]:
    package = rel.split("/")[0]
    if package == CORE:
        return {CORE}
    if package in ROLES:
        return {CORE, package}
    return set(PACKAGES)  # a composition root


def test_the_sources_are_found() -> None:
    found = {rel.split("/")[0] for rel, _ in sources()}
    assert found == set(PACKAGES)


@pytest.mark.parametrize("rel,tree", list(sources()), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_follow_the_layering(rel: str, tree: ast.Module) -> None:
    wrong = imported_packages(tree) - allowed_imports(rel)
    assert not wrong, (
        f"{rel} imports {sorted(wrong)}; allowed: {sorted(allowed_imports(rel))} (docs/design.md)"
    )


def environment_reads(tree: ast.Module) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr in ("environ", "getenv", "environb", "putenv"):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(a.name in ("environ", "getenv", "environb") for a in node.names):
                lines.append(node.lineno)
    return lines


def test_only_settings_and_the_server_launcher_read_the_environment() -> None:
    offenders = {}
    for rel, tree in sources():
        if rel in ENV_READERS or rel in ENV_PASSED_TO_CHILDREN:
            continue
        lines = environment_reads(tree)
        if lines:
            offenders[rel] = lines
    assert not offenders, f"os.environ read outside groundwatch/settings.py: {offenders}"


def test_the_environment_exceptions_only_pass_it_on() -> None:
    """The bench files excused above copy os.environ into a dict for a child; they read no key."""
    for rel, tree in sources():
        if rel not in ENV_PASSED_TO_CHILDREN:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript | ast.Call) and "os.environ" in ast.unparse(node):
                text = ast.unparse(node)
                assert not text.startswith(("os.environ[", "os.environ.get(")), (
                    f"{rel}:{node.lineno} reads {text}"
                )


def docstring_nodes(tree: ast.Module) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def key_literals(tree: ast.Module) -> list[tuple[int, str]]:
    skip = docstring_nodes(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and "gw:" in node.value
    ]


def test_key_names_are_spelled_only_in_keys_py() -> None:
    offenders = {
        rel: found for rel, tree in sources() if rel != KEYS_MODULE and (found := key_literals(tree))
    }
    assert not offenders, f"Redis key names spelled outside {KEYS_MODULE}: {offenders}"


def test_the_checks_can_fail() -> None:
    """The same checks on made-up sources that break each rule."""
    bad = ast.parse(
        '"""doc gw:{feed}:frames is fine here"""\n'
        "import os\nfrom loaders.registry import Registry\n"
        "x = os.environ.get('A')\nkey = 'gw:{f}:frames'\n"
    )
    assert imported_packages(bad) - allowed_imports("consumers/x.py") == {"loaders"}
    assert imported_packages(bad) - allowed_imports("demo/x.py") == set()
    assert environment_reads(bad) == [4]
    assert key_literals(bad) == [(5, "gw:{f}:frames")]
