"""Static checks of the deployment files (there is no container engine on these machines).

- docker-compose.yml against the Compose specification's JSON schema (check-jsonschema's
  vendored copy, no network);
- every groundwatch service's command parsed by groundwatch's own CLI parser, and every
  redis-server service loading the engine the Dockerfile builds;
- every environment variable a Settings field (REDIS_URL or GROUNDWATCH_<FIELD>);
- the Dockerfile with hadolint (.hadolint.yaml), plus the checks hadolint cannot make: two
  stages, the role picked by the command (ENTRYPOINT groundwatch), Debian's redis-server, every
  COPY source present in the repository, every file a service names copied into the image, and
  what the build installs against pyproject.toml and the Makefile (every package copied, the onnx
  extra, onnx2torch with --no-deps at the Makefile's pin, the CPU torch kept and checked).

Each checker runs on the real files (no finding) and on a broken copy (the finding), so a
broken service command or an unknown variable fails `make test`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from groundwatch.cli import build_parser
from groundwatch.settings import REPO_ROOT, Settings

COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `.venv/bin/pip install -e '.[dev]'` (it is in the dev extra)")
    return found


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def dockerfile_env(text: str) -> dict[str, str]:
    out = {}
    for block in re.findall(r"^ENV (.+?)(?<!\\)$", text, re.M | re.S):
        for name, value in re.findall(r"(\w+)=(\S+)", block):
            out[name] = value
    return out


def image_files(text: str) -> set[str]:
    """Destinations of the runtime stage's COPY instructions."""
    runtime = text.rsplit("\nFROM ", 1)[-1]
    return {line.split()[-1] for line in runtime.splitlines() if line.startswith("COPY ")}


# --- the checkers ---------------------------------------------------------------------------------


def schema_findings(path: Path) -> list[str]:
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return [] if done.returncode == 0 else [done.stdout + done.stderr]


def command_findings(compose: dict[str, Any], dockerfile: str) -> list[str]:
    parser = build_parser()
    engine = dockerfile_env(dockerfile)["GROUNDWATCH_ENGINE_MODULE"]
    files = image_files(dockerfile)
    out = []
    for name, service in compose["services"].items():
        entrypoint = service.get("entrypoint")
        command = [str(c) for c in service.get("command") or []]
        if entrypoint is None:  # the image's ENTRYPOINT: groundwatch
            try:
                args = parser.parse_args(command)
            except SystemExit:
                out.append(f"{name}: `groundwatch {' '.join(command)}` does not parse")
                continue
            if args.command is None:
                out.append(f"{name}: no groundwatch subcommand in {command}")
            for word in command:
                if word.startswith("/opt/groundwatch/") and word not in files:
                    out.append(f"{name}: {word} is not copied into the image")
        elif entrypoint == ["redis-server"]:
            if command[:2] != ["--loadmodule", engine]:
                out.append(f"{name}: redis-server does not load the engine {engine} first")
            aof = command[command.index("--appendonly") + 1] if "--appendonly" in command else "no"
            if aof != "yes":
                out.append(f"{name}: redis-server without AOF (--appendonly yes)")
        elif entrypoint[:2] != ["sh", "-c"]:  # cluster-create: a shell line, not checked here
            out.append(f"{name}: unknown entrypoint {entrypoint}")
    return out


def environment_findings(compose: dict[str, Any], dockerfile: str) -> list[str]:
    fields = {f.name for f in dataclasses.fields(Settings)}
    known = {"REDIS_URL", *(f"GROUNDWATCH_{f.upper()}" for f in fields)}
    found = [
        (f"service {n}", v) for n, s in compose["services"].items() for v in (s.get("environment") or {})
    ]
    found += [("Dockerfile", v) for v in dockerfile_env(dockerfile) if v.startswith("GROUNDWATCH_")]
    return [
        f"{where}: {var} is not a setting (groundwatch/settings.py)"
        for where, var in found
        if var not in known
    ]


def dockerfile_findings(path: Path) -> list[str]:
    text = path.read_text()
    out = []
    done = subprocess.run(
        [tool("hadolint"), "--config", str(REPO_ROOT / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        out.append(f"hadolint: {done.stdout}{done.stderr}")
    if len(re.findall(r"^FROM ", text, re.M)) < 2:
        out.append("not multi-stage (build the engine, then a slim runtime)")
    if 'ENTRYPOINT ["groundwatch"]' not in text:
        out.append("ENTRYPOINT is not groundwatch: the command must pick the role")
    if "redis-server" not in text.rsplit("\nFROM ", 1)[-1]:
        out.append("the runtime stage does not install Debian's redis-server")
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                if not (path.parent / source).exists():
                    out.append(f"COPY {source}: no such file in the repository")
    return out + install_findings(text)


def install_findings(text: str) -> list[str]:
    """What the build stage installs against pyproject.toml and the Makefile: every package of the
    project copied in, the onnx extra, onnx2torch only with --no-deps at the Makefile's pin, and the
    torch of the pyproject pin (the CPU wheel) kept."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    build = text.rsplit("\nFROM ", 1)[0]
    copied = {line.split()[1] for line in build.splitlines() if line.startswith("COPY ")}
    out = [
        f"package {name} is not copied into the build stage (COPY {name} {name}): its commands would be missing"
        for name in (p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"])
        if name not in copied
    ]
    installs = [" ".join(c.split()) for c in re.findall(r"pip install ([^&\n]+)", build.replace("\\\n", " "))]
    if not any(re.search(r"'\.\[[^\]]*\bonnx\b[^\]]*\]'", c) for c in installs):
        out.append("the onnx extra is not installed ('.[onnx]'): `groundwatch load model.onnx` would fail")
    pin = re.search(r"onnx2torch==[\w.]+", (REPO_ROOT / "Makefile").read_text())
    assert pin is not None, "the Makefile no longer pins onnx2torch"
    converter = [c for c in installs if "onnx2torch" in c]
    if not converter or any("--no-deps" not in c.split() for c in converter):
        out.append(
            "onnx2torch is not installed with --no-deps: its torchvision requirement would replace torch"
        )
    if converter and not any(pin.group(0) in c for c in converter):
        out.append(f"onnx2torch is not installed at the Makefile's pin {pin.group(0)}")
    torch = next(d for d in project["project"]["dependencies"] if d.startswith("torch=="))
    if not any(torch in c.split() and "download.pytorch.org/whl/cpu" in c for c in installs):
        out.append(f"the CPU torch wheel is not installed at pyproject's pin {torch}")
    if f"torch.__version__ == '{torch.removeprefix('torch==')}+cpu'" not in build:
        out.append("the build does not check that the CPU torch is still the one installed")
    return out


# --- the tests ---------------------------------------------------------------------------------------


def test_the_deployment_files_pass_every_check() -> None:
    compose, dockerfile = load_compose(), DOCKERFILE.read_text()
    assert schema_findings(COMPOSE) == []
    assert command_findings(compose, dockerfile) == []
    assert environment_findings(compose, dockerfile) == []
    assert dockerfile_findings(DOCKERFILE) == []
    services = compose["services"]
    assert {"redis", "loader", "consumer", "watch", "cluster-create"} <= set(services)
    assert "container_name" not in services["consumer"]  # --scale consumer=4
    assert all("cluster" in services[f"redis-node-{i}"]["profiles"] for i in range(1, 7))
    for i in range(1, 7):
        # a node told to announce its host name but given none announces "?": no client reaches it
        args = services[f"redis-node-{i}"]["command"]
        if "--cluster-preferred-endpoint-type" in args:
            kind = args[args.index("--cluster-preferred-endpoint-type") + 1]
            assert kind != "hostname" or "--cluster-announce-hostname" in args, f"redis-node-{i}"
    assert {"cluster-consumer", "cluster-watch"} <= set(services)
    assert all(
        services[s]["environment"]["REDIS_URL"].startswith("redis://redis-node-")
        for s in ("cluster-consumer", "cluster-watch")
    )


def test_a_schema_violation_fails(tmp_path: Path) -> None:
    broken = load_compose()
    broken["services"]["consumer"]["restart"] = {"always": True}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    assert schema_findings(path)


def test_a_broken_service_command_fails() -> None:
    compose, dockerfile = load_compose(), DOCKERFILE.read_text()
    for command in (
        ["consume", "--no-such-flag"],
        ["consum"],
        ["load", "/opt/groundwatch/models/missing.pt"],
    ):
        broken = copy.deepcopy(compose)
        broken["services"]["consumer"]["command"] = command
        assert len(command_findings(broken, dockerfile)) == 1, command
    broken = copy.deepcopy(compose)
    broken["services"]["redis"]["command"] = ["--appendonly", "yes"]
    assert command_findings(broken, dockerfile)


def test_an_unknown_environment_variable_fails() -> None:
    compose, dockerfile = load_compose(), DOCKERFILE.read_text()
    broken = copy.deepcopy(compose)
    broken["services"]["watch"]["environment"] = {
        **broken["services"]["watch"]["environment"],
        "GROUNDWATCH_FED": "x",
    }
    assert environment_findings(broken, dockerfile) == [
        "service watch: GROUNDWATCH_FED is not a setting (groundwatch/settings.py)"
    ]
    assert environment_findings(compose, dockerfile + "\nENV GROUNDWATCH_NOPE=1\n")


def test_a_broken_dockerfile_fails() -> None:
    text = DOCKERFILE.read_text()
    for broken in (
        text.replace("COPY ingest ingest", "COPY ingestion ingest"),
        text.replace('ENTRYPOINT ["groundwatch"]', 'ENTRYPOINT ["redis-server"]'),
        text.replace(
            "apt-get install -y --no-install-recommends redis-server", "apt-get install redis-server"
        ),
    ):
        path = REPO_ROOT / ".Dockerfile.test"
        try:
            path.write_text(broken)
            assert dockerfile_findings(path)
        finally:
            path.unlink()


def test_a_dockerfile_that_installs_the_onnx_import_unsafely_fails() -> None:
    """The static checks of what the image installs (install_findings), one breakage at a time."""
    text = DOCKERFILE.read_text()
    assert install_findings(text) == []
    for broken, finding in (
        (text.replace("COPY web web\n", ""), "package web is not copied"),
        (text.replace("'.[onnx]'", "."), "the onnx extra is not installed"),
        (text.replace("--no-deps onnx2torch", "onnx2torch"), "onnx2torch is not installed with --no-deps"),
        (text.replace("onnx2torch==1.5.15", "onnx2torch==1.5.14"), "at the Makefile's pin"),
        (text.replace("torch==2.13.0\n", "torch\n"), "the CPU torch wheel is not installed"),
        (text.replace("assert torch.__version__", "print(torch.__version__)"), "does not check"),
    ):
        assert broken != text, finding
        found = install_findings(broken)
        assert len(found) == 1 and finding in found[0], (finding, found)
