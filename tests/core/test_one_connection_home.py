"""Every Redis client of the packages is made in groundwatch/connection.py (TLS verification,
credentials and the embedded server's defaults live there), read from the source with `ast`."""

from __future__ import annotations

import ast

from groundwatch.settings import REPO_ROOT

PACKAGES = [p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").exists() and p.name != "tests"]
HOME = "groundwatch/connection.py"
MAKERS = {"Redis", "StrictRedis", "from_url", "ConnectionPool", "RedisCluster", "SSLConnection"}


def _made_clients(tree: ast.Module) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name not in MAKERS:
            continue
        # Wrapping a pool connection.py made (another response parsing on the same connections)
        # makes no new connection.
        if [k.arg for k in node.keywords] == ["connection_pool"] and not node.args:
            continue
        lines.append(node.lineno)
    return lines


def test_redis_clients_are_made_only_in_groundwatch_connection() -> None:
    assert "groundwatch" in PACKAGES and "bench" in PACKAGES
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).as_posix()
            if rel == HOME:
                continue
            lines = _made_clients(ast.parse(path.read_text(), filename=rel))
            if lines:
                found[rel] = lines
    assert not found, f"Redis clients made outside {HOME} (use connection.connect / client_for): {found}"
