"""The layering, read from the source with `ast` (so a new import that breaks it fails here).

- the core (groundwatch/) imports no role, and neither the composition roots;
- a role (ingest, loaders, consumers, models, monitor, web) imports only the core and itself;
- demo/ and bench/ are the declared composition roots: they may import everything;
- ``os.environ`` (and ``os.getenv``) is read only in groundwatch/settings.py and the server
  launcher groundwatch/server.py (the composition roots may copy it whole for a child process);
- no Redis key name (a ``gw:`` literal) is spelled outside groundwatch/keys.py (docstrings,
  which document the layout, are not code).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

import pytest

from groundwatch.settings import REPO_ROOT

CORE = "groundwatch"
ROOTS = ("demo", "bench")  # the declared composition roots
# Every other top-level package of the repository is a role (found, not listed, so a new role is
# held too); tests/ is not shipped and composes whatever it tests.
PACKAGES = tuple(sorted(p.parent.name for p in REPO_ROOT.glob("*/__init__.py") if p.parent.name != "tests"))
ROLES = tuple(p for p in PACKAGES if p != CORE and p not in ROOTS)

ENV_READERS = {
    "groundwatch/settings.py",  # the one Settings object
    "groundwatch/server.py",  # the server launcher passes its environment to redis-server
}
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
    assert CORE in PACKAGES and set(ROOTS) <= set(PACKAGES)
    assert {"ingest", "loaders", "consumers", "models"} <= set(ROLES)


@pytest.mark.parametrize("rel,tree", list(sources()), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_follow_the_layering(rel: str, tree: ast.Module) -> None:
    wrong = imported_packages(tree) - allowed_imports(rel)
    assert not wrong, (
        f"{rel} imports {sorted(wrong)}; allowed: {sorted(allowed_imports(rel))} (docs/design.md)"
    )


def environment_reads(tree: ast.Module, *, copies_allowed: bool = False) -> list[int]:
    """Lines that read the environment. With `copies_allowed` (the composition roots, which start
    servers, consumers and competitors as child processes that must inherit PATH, LD_* and the
    like), copying it whole (``dict(os.environ)``, ``{**os.environ}``) or setting a default in it
    is allowed; reading a variable (``os.environ[...]``, ``.get``, ``os.getenv``) never is."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(a.name in ("environ", "getenv", "environb") for a in node.names):
                lines.append(node.lineno)
        if not (
            isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
        ):
            continue
        if node.attr in ("getenv", "getenvb"):
            lines.append(node.lineno)
        elif node.attr in ("environ", "environb") and not copies_allowed:
            lines.append(node.lineno)
    if copies_allowed:
        for use in ast.walk(tree):
            target: ast.expr | None = None
            if isinstance(use, ast.Subscript):
                target = use.value
            elif isinstance(use, ast.Call) and isinstance(use.func, ast.Attribute):
                if use.func.attr in ("get", "pop", "items", "keys", "values"):
                    target = use.func.value
            if target is not None and ast.unparse(target) in ("os.environ", "os.environb"):
                lines.append(target.lineno)
    return sorted(lines)


def test_only_settings_and_the_server_launcher_read_the_environment() -> None:
    offenders = {}
    for rel, tree in sources():
        if rel in ENV_READERS:
            continue
        lines = environment_reads(tree, copies_allowed=rel.split("/")[0] in ROOTS)
        if lines:
            offenders[rel] = lines
    assert not offenders, f"the environment is read outside groundwatch/settings.py: {offenders}"


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
    assert environment_reads(bad, copies_allowed=True) == [4]
    copy = ast.parse("import os\nenv = dict(os.environ)\nos.environ.setdefault('A', '1')\n")
    assert environment_reads(copy) == [2, 3] and environment_reads(copy, copies_allowed=True) == []
    assert key_literals(bad) == [(5, "gw:{f}:frames")]
