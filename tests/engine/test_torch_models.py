"""TorchScript models saved by the installed torch (2.13), stored and run through the engine on a
real redis-server: outputs equal torch's in process, signatures show in MODELGET, and the errors
carry libtorch's reasons."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis
import torch

from groundwatch.server import RedisServer

# torch.jit.script/save still work in 2.13 but warn; the engine serves exactly those archives.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(image)))
        x = torch.relu(self.conv2(x)).mean(dim=(2, 3))
        return torch.softmax(self.head(x), dim=1)


class ThreeInputs(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return (a - b) * scale


class TwoOutputs(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x.argmax(dim=1)


class Unsigned(torch.nn.Module):
    def forward(self, pixels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return pixels.to(torch.float32) / 255.0 + counts.to(torch.float32)


class Threshold(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x > 0.5


@pytest.fixture(scope="module")
def exact(server_factory: Callable[..., RedisServer]) -> Iterator[redis.Redis]:
    """A server whose torch runs one intra-op thread, like `one_thread()` here: the same libtorch
    with the same threads gives the same bits."""
    server = server_factory(module_args=("INTRA_OP_PARALLELISM", "1"))
    client = redis.Redis(port=server.port, socket_timeout=60)
    yield client
    client.close()
    server.stop()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def saved(module: torch.nn.Module) -> tuple[bytes, Any]:
    torch.manual_seed(0)
    scripted = torch.jit.script(module.eval())
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    return buf.getvalue(), scripted


def tensorset(r: redis.Redis, key: str, array: np.ndarray, dtype: str) -> None:
    r.execute_command("AI.TENSORSET", key, dtype, *array.shape, "BLOB", np.ascontiguousarray(array).tobytes())


def tensorget(r: redis.Redis, key: str, np_dtype: Any) -> np.ndarray:
    meta = r.execute_command("AI.TENSORGET", key, "META", "BLOB")
    fields = dict(zip(meta[::2], meta[1::2], strict=False))
    shape = [int(d) for d in fields[b"shape"]]
    return np.frombuffer(fields[b"blob"], dtype=np_dtype).reshape(shape)


def modelget_meta(r: redis.Redis, key: str) -> dict[bytes, Any]:
    meta = r.execute_command("AI.MODELGET", key, "META")
    return dict(zip(meta[::2], meta[1::2], strict=False))


def test_conv_net_matches_torch(exact: redis.Redis) -> None:
    engine = exact
    torch.manual_seed(1)
    module = ConvNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        assert module.bn.running_mean is not None and module.bn.running_var is not None
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
    blob, scripted = saved(module)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode(), one_thread():
        want = scripted(torch.from_numpy(x)).numpy()
    assert engine.execute_command("AI.MODELSTORE", "conv", "TORCH", "CPU", "BLOB", blob) == b"OK"
    tensorset(engine, "x", x, "FLOAT")
    assert engine.execute_command("AI.MODELEXECUTE", "conv", "INPUTS", 1, "x", "OUTPUTS", 1, "y") == b"OK"
    got = tensorget(engine, "y", np.float32)
    assert got.shape == (2, 5)
    np.testing.assert_array_equal(got, want)  # same libtorch, same threads: bit for bit
    meta = modelget_meta(engine, "conv")
    assert meta[b"backend"] == b"TORCH"
    assert meta[b"inputs"] == [b"image"]
    assert meta[b"outputs"] == [b""]


def test_linear_exact(exact: redis.Redis) -> None:
    engine = exact
    blob, scripted = saved(torch.nn.Linear(4, 3))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with torch.inference_mode(), one_thread():
        want = scripted(torch.from_numpy(x)).numpy()
    engine.execute_command("AI.MODELSTORE", "lin", "TORCH", "CPU:0", "BLOB", blob)
    tensorset(engine, "x", x, "FLOAT")
    engine.execute_command("AI.MODELEXECUTE", "lin", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    np.testing.assert_array_equal(tensorget(engine, "y", np.float32), want)
    assert modelget_meta(engine, "lin")[b"inputs"] == [b"input"]


def test_three_inputs_by_name_and_order(engine: redis.Redis) -> None:
    blob, _ = saved(ThreeInputs())
    engine.execute_command("AI.MODELSTORE", "m3", "TORCH", "CPU", "BLOB", blob)
    assert modelget_meta(engine, "m3")[b"inputs"] == [b"a", b"b", b"scale"]
    tensorset(engine, "a", np.array([10, 20], dtype=np.float64), "DOUBLE")
    tensorset(engine, "b", np.array([1, 2], dtype=np.float64), "DOUBLE")
    tensorset(engine, "s", np.array([3, -1], dtype=np.float64), "DOUBLE")
    engine.execute_command("AI.MODELEXECUTE", "m3", "INPUTS", 3, "a", "b", "s", "OUTPUTS", 1, "y")
    assert tensorget(engine, "y", np.float64).tolist() == [27.0, -18.0]


def test_tuple_outputs(engine: redis.Redis) -> None:
    blob, _ = saved(TwoOutputs())
    engine.execute_command("AI.MODELSTORE", "two", "TORCH", "CPU", "BLOB", blob)
    assert modelget_meta(engine, "two")[b"outputs"] == [b"", b""]
    x = np.array([[1, 5, 2], [7, 0, 3]], dtype=np.float32)
    tensorset(engine, "x", x, "FLOAT")
    engine.execute_command("AI.MODELEXECUTE", "two", "INPUTS", 1, "x", "OUTPUTS", 2, "doubled", "best")
    assert tensorget(engine, "doubled", np.float32).tolist() == (x * 2).tolist()
    best = engine.execute_command("AI.TENSORGET", "best", "META", "VALUES")
    fields = dict(zip(best[::2], best[1::2], strict=False))
    assert fields[b"dtype"] == b"INT64"
    assert fields[b"values"] == [1, 0]


def _count_error(message: str, wanted: int, given: int) -> bool:
    """The module answers RedisAI's own text; the backend's (reached e.g. from scripts) says both numbers."""
    return "does not match" in message or (str(wanted) in message and str(given) in message)


def test_wrong_output_count_is_refused(engine: redis.Redis) -> None:
    blob, _ = saved(TwoOutputs())
    engine.execute_command("AI.MODELSTORE", "two", "TORCH", "CPU", "BLOB", blob)
    tensorset(engine, "x", np.ones((1, 3), dtype=np.float32), "FLOAT")
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.MODELEXECUTE", "two", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    assert _count_error(str(err.value), 2, 1)
    assert engine.exists("y") == 0


def test_uint8_and_uint16_inputs(engine: redis.Redis) -> None:
    blob, scripted = saved(Unsigned())
    pixels = np.array([[0, 51, 255]], dtype=np.uint8)
    counts = np.array([[65535, 1, 40000]], dtype=np.uint16)
    with torch.inference_mode():
        want = scripted(torch.from_numpy(pixels), torch.from_numpy(counts.astype(np.int32)).to(torch.uint16))
    engine.execute_command("AI.MODELSTORE", "u", "TORCH", "CPU", "BLOB", blob)
    tensorset(engine, "p", pixels, "UINT8")
    tensorset(engine, "c", counts, "UINT16")
    engine.execute_command("AI.MODELEXECUTE", "u", "INPUTS", 2, "p", "c", "OUTPUTS", 1, "y")
    got = tensorget(engine, "y", np.float32)
    np.testing.assert_array_equal(got, want.numpy())
    assert got[0, 0] == 65535.0 and got[0, 2] == 40001.0


def test_bool_output(engine: redis.Redis) -> None:
    blob, _ = saved(Threshold())
    engine.execute_command("AI.MODELSTORE", "t", "TORCH", "CPU", "BLOB", blob)
    tensorset(engine, "x", np.array([0.1, 0.9, 0.5, 0.6], dtype=np.float32), "FLOAT")
    engine.execute_command("AI.MODELEXECUTE", "t", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    reply = engine.execute_command("AI.TENSORGET", "y", "META", "VALUES")
    fields = dict(zip(reply[::2], reply[1::2], strict=False))
    assert fields[b"dtype"] == b"BOOL"
    assert fields[b"values"] == [0, 1, 0, 1]


def test_wrong_input_count_is_refused(engine: redis.Redis) -> None:
    blob, _ = saved(ThreeInputs())
    engine.execute_command("AI.MODELSTORE", "m3", "TORCH", "CPU", "BLOB", blob)
    tensorset(engine, "a", np.ones(2, dtype=np.float32), "FLOAT")
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.MODELEXECUTE", "m3", "INPUTS", 1, "a", "OUTPUTS", 1, "y")
    assert _count_error(str(err.value), 3, 1)
    assert engine.exists("y") == 0


def test_string_input_refused(engine: redis.Redis) -> None:
    blob, _ = saved(Threshold())
    engine.execute_command("AI.MODELSTORE", "t", "TORCH", "CPU", "BLOB", blob)
    engine.execute_command("AI.TENSORSET", "s", "STRING", 2, "VALUES", "a", "b")
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.MODELEXECUTE", "t", "INPUTS", 1, "s", "OUTPUTS", 1, "y")
    assert "STRING" in str(err.value)


def test_gpu_device_fails_cleanly(engine: redis.Redis) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    blob, _ = saved(Threshold())
    for device in ("GPU", "GPU:0", "gpu:1"):
        with pytest.raises(redis.ResponseError) as err:
            engine.execute_command("AI.MODELSTORE", "g", "TORCH", device, "BLOB", blob)
        assert "GPU" in str(err.value) or "CUDA" in str(err.value)
    assert engine.exists("g") == 0
    assert engine.ping()


def test_garbage_blob_reports_libtorch_reason(engine: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.MODELSTORE", "bad", "TORCH", "CPU", "BLOB", b"\x00not a torchscript zip")
    assert "PytorchStreamReader" in str(err.value)
    blob, _ = saved(Threshold())
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.MODELSTORE", "bad", "TORCH", "CPU", "BLOB", blob[: len(blob) // 2])
    assert str(err.value)
    assert engine.exists("bad") == 0
    assert engine.ping()


def test_a_model_that_raises_reports_and_survives(engine: redis.Redis) -> None:
    blob, _ = saved(ThreeInputs())
    engine.execute_command("AI.MODELSTORE", "m3", "TORCH", "CPU", "BLOB", blob)
    tensorset(engine, "a", np.ones(2, dtype=np.float32), "FLOAT")
    tensorset(engine, "b", np.ones(3, dtype=np.float32), "FLOAT")
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.MODELEXECUTE", "m3", "INPUTS", 3, "a", "b", "a", "OUTPUTS", 1, "y")
    # libtorch's text (traceback, then the reason) on one line
    message = str(err.value)
    assert "The size of tensor a (2) must match the size of tensor b (3)" in message, message
    assert "forward" in message and "\n" not in message
    assert engine.ping()


def test_redisai_client_round_trip(engine: redis.Redis) -> None:
    redisai = pytest.importorskip("redisai")
    client = redisai.Client(connection_pool=engine.connection_pool)
    blob, scripted = saved(ThreeInputs())
    assert client.modelstore("m3", "TORCH", "CPU", blob, tag="v1") == "OK"
    a = np.array([[1.0, 2.0]], dtype=np.float32)
    b = np.array([[0.5, 0.5]], dtype=np.float32)
    s = np.array([[2.0, 4.0]], dtype=np.float32)
    for key, value in (("a", a), ("b", b), ("s", s)):
        assert client.tensorset(key, value) == "OK"
    assert client.modelexecute("m3", inputs=["a", "b", "s"], outputs=["y"]) == "OK"
    with torch.inference_mode():
        want = scripted(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(s)).numpy()
    np.testing.assert_array_equal(client.tensorget("y"), want)
    meta = client.modelget("m3", meta_only=True)
    assert meta["backend"] == "TORCH" and meta["tag"] == "v1"
    assert meta["inputs"] == ["a", "b", "scale"]


def test_traced_model_matches_torch(exact: redis.Redis) -> None:
    engine = exact
    torch.manual_seed(2)
    module = ConvNet().eval()
    example = torch.rand(1, 3, 16, 16)
    traced = torch.jit.trace(module, example)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    x = np.random.default_rng(3).random((4, 3, 16, 16), dtype=np.float32)
    with torch.inference_mode(), one_thread():
        want = traced(torch.from_numpy(x)).numpy()
    engine.execute_command("AI.MODELSTORE", "traced", "TORCH", "CPU", "BLOB", buf.getvalue())
    tensorset(engine, "x", x, "FLOAT")
    engine.execute_command("AI.MODELEXECUTE", "traced", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    np.testing.assert_array_equal(tensorget(engine, "y", np.float32), want)


def test_state_dict_is_not_a_model(engine: redis.Redis) -> None:
    """A torch.save() checkpoint is a zip too, but not TorchScript: libtorch says what is missing."""
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2).state_dict(), buf)
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.MODELSTORE", "sd", "TORCH", "CPU", "BLOB", buf.getvalue())
    assert "constants.pkl" in str(err.value) or "PytorchStreamReader" in str(err.value), str(err.value)
    assert engine.exists("sd") == 0
    assert engine.ping()


class HalfOutput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.half()


def test_output_type_without_a_redisai_type_is_an_error(engine: redis.Redis) -> None:
    blob, _ = saved(HalfOutput())
    engine.execute_command("AI.MODELSTORE", "h", "TORCH", "CPU", "BLOB", blob)
    tensorset(engine, "x", np.ones(2, dtype=np.float32), "FLOAT")
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.MODELEXECUTE", "h", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    assert "Half" in str(err.value)
    assert engine.exists("y") == 0


class ListOutput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, x * 2]


def test_list_outputs_are_counted_when_run(engine: redis.Redis) -> None:
    """forward() -> List[Tensor]: the count is known only at run time (model_noutputs is 0), so
    the backend checks it then, and MODELGET lists no output names."""
    blob, _ = saved(ListOutput())
    engine.execute_command("AI.MODELSTORE", "l", "TORCH", "CPU", "BLOB", blob)
    assert modelget_meta(engine, "l")[b"outputs"] == []
    tensorset(engine, "x", np.array([1, 2], dtype=np.float32), "FLOAT")
    engine.execute_command("AI.MODELEXECUTE", "l", "INPUTS", 1, "x", "OUTPUTS", 2, "a", "b")
    assert tensorget(engine, "b", np.float32).tolist() == [2.0, 4.0]
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.MODELEXECUTE", "l", "INPUTS", 1, "x", "OUTPUTS", 3, "c", "d", "e")
    assert "returned 2 outputs" in str(err.value) and "3 were expected" in str(err.value)
    assert engine.exists("c") == 0


class ListInput(torch.nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(xs).sum(dim=0)


def test_list_input_takes_every_input(engine: redis.Redis) -> None:
    """forward(self, xs: List[Tensor]) receives all the inputs it is given in the list. MODELEXECUTE
    gives as many as MODELGET lists (one); a script's redisAI.model_execute may give more."""
    blob, _ = saved(ListInput())
    engine.execute_command("AI.MODELSTORE", "li{l}", "TORCH", "CPU", "BLOB", blob)
    assert modelget_meta(engine, "li{l}")[b"inputs"] == [b"xs"]
    for k, v in (("a{l}", 1.0), ("b{l}", 10.0), ("c{l}", 100.0)):
        tensorset(engine, k, np.full(2, v, dtype=np.float32), "FLOAT")
    engine.execute_command("AI.MODELEXECUTE", "li{l}", "INPUTS", 1, "a{l}", "OUTPUTS", 1, "y{l}")
    assert tensorget(engine, "y{l}", np.float32).tolist() == [1.0, 1.0]
    source = (
        "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
        "    return redisAI.model_execute(keys[0], tensors, 1)[0]\n"
    )
    engine.execute_command("AI.SCRIPTSTORE", "s{l}", "CPU", "ENTRY_POINTS", 1, "f", "SOURCE", source)
    engine.execute_command(
        "AI.SCRIPTEXECUTE",
        "s{l}",
        "f",
        "KEYS",
        1,
        "li{l}",
        "INPUTS",
        3,
        "a{l}",
        "b{l}",
        "c{l}",
        "OUTPUTS",
        1,
        "z{l}",
    )
    assert tensorget(engine, "z{l}", np.float32).tolist() == [111.0, 111.0]
