"""The TORCH backend on its own: engine/backend/test_backend.cpp dlopen()s redisai_torch.so with a
stub host (no Redis) and checks models, threads, errors and scripts against TorchScript files
saved here by the installed torch. Also checks what the .so exports and links."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from groundwatch.settings import REPO_ROOT

BUILD_DIRS = [REPO_ROOT / "engine" / "build", REPO_ROOT / "engine" / "build-backend"]


class Add(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Pair(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x.sum()


class Unsigned(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.float() + y.float()


# torch.jit.script/save still work in 2.13 but warn; the engine serves exactly those archives.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


BACKEND_SO = Path("backends/redisai_torch/redisai_torch.so")


@pytest.fixture(scope="module")
def backend_so(engine_module: Path | None) -> Path:
    """The backend beside the module under test (`--engine`, e.g. the ASan build), else the
    newest of engine/build (`make engine`) and engine/build-backend (a stand-alone
    `cmake -S engine/backend -B engine/build-backend`)."""
    if engine_module is not None and (engine_module.parent / BACKEND_SO).exists():
        return engine_module.parent / BACKEND_SO
    found = [build / BACKEND_SO for build in BUILD_DIRS if (build / BACKEND_SO).exists()]
    if not found:
        pytest.fail(f"{BACKEND_SO} is not built under {BUILD_DIRS[0]}; run `make engine`")
    return max(found, key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("torch_models")
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(Add()), str(d / "add.pt"))
    torch.jit.save(torch.jit.script(Pair()), str(d / "pair.pt"))
    torch.jit.save(torch.jit.script(Unsigned()), str(d / "u8.pt"))
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 3)), str(d / "linear.pt"))
    torch.jit.save(torch.jit.freeze(torch.jit.script(torch.nn.Linear(64, 64).eval())), str(d / "frozen.pt"))
    return d


def test_backend_standalone(backend_so: Path, model_dir: Path) -> None:
    build = backend_so.parents[2]
    program = next(
        (p for p in (build / "backend/gw_test_backend", build / "gw_test_backend") if p.exists()), None
    )
    if program is None:
        pytest.fail(f"gw_test_backend is not built under {build}; run `make engine`")
    proc = subprocess.run(
        [str(program), str(backend_so), str(model_dir)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert proc.returncode == 0 and not failed, proc.stdout + proc.stderr
    assert "0 failure(s)" in proc.stdout
    assert "ok: memory: output over the limit refused" in proc.stdout  # ABI 3 checks ran
    assert "ok: no resident growth" in proc.stdout or "skip: resident growth (AddressSanitizer" in proc.stdout
    assert f"version {torch.__version__.split('+')[0]}" in proc.stdout


def test_exports_only_init(backend_so: Path) -> None:
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(backend_so)], capture_output=True, text=True, check=True
    ).stdout
    symbols = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert symbols == {"gw_backend_init"}


def test_loads_without_library_path(backend_so: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(["ldd", str(backend_so)], capture_output=True, text=True, check=True, env=env).stdout
    assert "not found" not in out, out
    torch_lib = Path(torch.__file__).parent / "lib"
    assert str(torch_lib.resolve()) in out or str(torch_lib) in out, out
