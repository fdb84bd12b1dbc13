"""Small helpers shared by the module-side engine tests: tiny TorchScript models and scripts."""

from __future__ import annotations

import io
import warnings

import redis
import torch


def scripted_blob(module: torch.nn.Module) -> bytes:
    """A torch.jit.save archive of the scripted module, as AI.MODELSTORE takes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


class Add(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class Sum0(torch.nn.Module):
    """Collapses the batch dimension: the wrong batch size for auto-batching."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=0, keepdim=True)


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


ADD = scripted_blob(Add())
DOUBLE = scripted_blob(Double())
SUM0 = scripted_blob(Sum0())
LINEAR = scripted_blob(Linear())

SCRIPT = """
def double(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * 2

def add_args(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + float(args[0])

def set_key(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0], args[0])
    return torch.ones(1)

def call_model(tensors: List[Tensor], keys: List[str], args: List[str]):
    return redisAI.model_execute(keys[0], tensors, 1)

def fail(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[5]
"""
ENTRY_POINTS = ["double", "add_args", "set_key", "call_model", "fail"]


def store_script(r: redis.Redis, key: str = "s") -> None:
    r.execute_command(
        "AI.SCRIPTSTORE",
        key,
        "CPU",
        "ENTRY_POINTS",
        len(ENTRY_POINTS),
        *ENTRY_POINTS,
        "SOURCE",
        SCRIPT,
    )


def err(exc: Exception) -> str:
    """The error text redis-py gives (it strips the leading 'ERR ')."""
    return str(exc)


# redis-py strips "ERR " but keeps other error codes.
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
