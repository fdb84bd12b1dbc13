"""The single door to the engine's AI.* commands.

Every AI.* command groundwatch sends is built here, so the RedisAI client library (which pins
redis-py below 5) could be swapped for another in this one module. Arguments are built with the
redisai client's command builders where one exists; DAGs, which groundwatch pipelines by the
hundred, are built directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

with warnings.catch_warnings():
    # redisai 1.3 imports pkg_resources, which warns on import; nothing for our users to act on.
    warnings.simplefilter("ignore", UserWarning)
    from redisai import command_builder as builder

from groundwatch.errors import GroundwatchError

# Engine TYPE names <-> numpy dtypes (little-endian, C order on the wire).
DTYPES: dict[str, np.dtype[Any]] = {
    "FLOAT": np.dtype("<f4"),
    "DOUBLE": np.dtype("<f8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "BOOL": np.dtype("?"),
}


class EngineError(GroundwatchError):
    """The engine refused a command, or is not loaded."""


def type_name(dtype: np.dtype[Any] | type) -> str:
    """The engine's TYPE name for a numpy dtype; raises EngineError for unsupported ones."""
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    for name, candidate in DTYPES.items():
        if candidate == dt:
            return name
    raise EngineError(f"dtype {np.dtype(dtype)} has no engine tensor type; use one of {', '.join(DTYPES)}")


def to_array(dtype_name: str, shape: Sequence[int], blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=DTYPES[dtype_name]).reshape(tuple(shape))


@dataclass(frozen=True)
class ModelInfo:
    key: str
    device: str
    tag: str
    calls: int
    samples: int
    errors: int
    duration_us: int

    @property
    def mean_ms(self) -> float:
        return self.duration_us / self.calls / 1000.0 if self.calls else 0.0


class Engine:
    """AI.* commands on one Redis client (bytes responses expected)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def _call(self, *args: Any) -> Any:
        try:
            return self.client.execute_command(*args)
        except redis.ResponseError as e:
            if "unknown command" in str(e).lower():
                raise EngineError(
                    "this Redis has no engine loaded (AI.* commands are unknown); start it with "
                    "`groundwatch up`, or load engine/build/engine.so with --loadmodule"
                ) from e
            raise EngineError(f"{args[0]} failed: {e}") from e

    # --- models ------------------------------------------------------------------------------

    def model_store(
        self,
        key: str,
        blob: bytes,
        *,
        device: str = "CPU",
        tag: str | None = None,
        batch: int | None = None,
        min_batch: int | None = None,
        min_batch_timeout_ms: int | None = None,
        extra: Sequence[str] = (),
        optimize: bool = False,
    ) -> None:
        """AI.MODELSTORE of a TorchScript blob. `extra` holds engine keywords RedisAI lacks.

        `optimize` sends the engine's OPTIMIZE keyword: the engine freezes the module and runs
        libtorch's inference passes on it (CPU); see :meth:`optimize_state` for the outcome.
        """
        args = builder.modelstore(
            key, "TORCH", device, blob, batch, min_batch, min_batch_timeout_ms, tag, None, None
        )
        if optimize and "OPTIMIZE" not in extra:
            extra = ["OPTIMIZE", *extra]
        if extra:
            blob_at = args.index("BLOB")
            args = [*args[:blob_at], *extra, *args[blob_at:]]
        self._call(*args)

    def model_delete(self, key: str) -> None:
        self._call("AI.MODELDEL", key)

    def model_meta(self, key: str) -> dict[str, Any]:
        reply = self._call("AI.MODELGET", key, "META")
        return _pairs(reply)

    def optimize_state(self, key: str) -> tuple[bool, str] | None:
        """(optimised, status) of a model stored with OPTIMIZE; None for a plain one."""
        meta = self.model_meta(key)
        if "optimized" not in meta:
            return None
        return bool(int(meta["optimized"])), str(meta.get("optimize_status", ""))

    def model_blob(self, key: str) -> bytes:
        """AI.MODELGET key BLOB: the blob as stored (for an optimised model, the original)."""
        reply = self._call("AI.MODELGET", key, "BLOB")
        return b"".join(reply) if isinstance(reply, list) else bytes(reply)

    def model_info(self, key: str) -> ModelInfo:
        info = _pairs(self._call("AI.INFO", key))
        return ModelInfo(
            key=key,
            device=str(info.get("device", "")),
            tag=str(info.get("tag", "")),
            calls=int(info.get("calls", 0)),
            samples=int(info.get("samples", 0)),
            errors=int(info.get("errors", 0)),
            duration_us=int(info.get("duration", 0)),
        )

    # --- tensors and execution ---------------------------------------------------------------

    def tensor_set(self, key: str, array: np.ndarray) -> None:
        self._call(*builder.tensorset(key, np.ascontiguousarray(array), array.shape, type_name(array.dtype)))

    def tensor_get(self, key: str) -> np.ndarray:
        reply = _pairs(self._call("AI.TENSORGET", key, "META", "BLOB"))
        return to_array(str(reply["dtype"]), [int(d) for d in reply["shape"]], reply["blob"])

    def run(
        self, model_key: str, array: np.ndarray, route_key: str, timeout_ms: int | None = None
    ) -> np.ndarray:
        """One input through the model in one DAG; the tensors never touch the keyspace."""
        reply = self.client.execute_command(*dag_command(model_key, route_key, array, timeout_ms))
        return dag_output(reply)


def dag_command(
    model_key: str, route_key: str, array: np.ndarray, timeout_ms: int | None = None
) -> list[Any]:
    """AI.DAGEXECUTE: TENSORSET the input, MODELEXECUTE, TENSORGET META BLOB the output.

    Raw bytes go in as one BLOB argument, so a tile is copied once. ROUTING names a key of the
    feed's slot, so Redis Cluster sends the DAG where the feed's model copy lives.
    """
    data = np.ascontiguousarray(array)
    args: list[Any] = ["AI.DAGEXECUTE", "ROUTING", route_key]
    if timeout_ms is not None:
        args += ["TIMEOUT", timeout_ms]
    args += ["|>", "AI.TENSORSET", "in", type_name(data.dtype), *data.shape, "BLOB", data.tobytes()]
    args += ["|>", "AI.MODELEXECUTE", model_key, "INPUTS", 1, "in", "OUTPUTS", 1, "out"]
    args += ["|>", "AI.TENSORGET", "out", "META", "BLOB"]
    return args


def dag_output(reply: Any) -> np.ndarray:
    """The output tensor of a dag_command reply; EngineError with the failing op's reason."""
    if isinstance(reply, bytes) and reply == b"TIMEDOUT":
        raise EngineError("the engine timed out the request while it waited in the queue")
    if isinstance(reply, Exception):
        raise EngineError(str(reply)) from reply
    if not isinstance(reply, list) or len(reply) != 3:
        raise EngineError(f"unexpected DAG reply {reply!r:.200}")
    for op in reply[:2]:
        if isinstance(op, Exception):
            raise EngineError(str(op)) from op
    if isinstance(reply[2], Exception):
        raise EngineError(str(reply[2])) from reply[2]
    meta = _pairs(reply[2])
    return to_array(str(meta["dtype"]), [int(d) for d in meta["shape"]], meta["blob"])


def _pairs(reply: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(reply[::2], reply[1::2], strict=True):
        key = name.decode() if isinstance(name, bytes) else str(name)
        if key != "blob" and isinstance(value, bytes):
            value = value.decode(errors="replace")
        out[key] = value
    return out


# --- many DAGs at once (consumers) -----------------------------------------------------------


class DagError(EngineError):
    """One DAG failed. `op` is the failing op's index (0 TENSORSET, 1 MODELEXECUTE, 2 TENSORGET),
    or -1 when the engine refused the whole command (e.g. ``model key is empty``)."""

    def __init__(self, message: str, op: int) -> None:
        super().__init__(message)
        self.op = op

    @property
    def model_missing(self) -> bool:
        return "model key is empty" in str(self).lower()

    @property
    def timed_out(self) -> bool:
        return "timedout" in str(self).lower() or "timed out" in str(self).lower()


def dag_result(reply: Any) -> np.ndarray:
    """Like :func:`dag_output`, but failures are :class:`DagError` naming the failing op."""
    if isinstance(reply, bytes) and reply == b"TIMEDOUT":
        raise DagError("TIMEDOUT: the engine timed out the request while it waited in the queue", -1)
    if isinstance(reply, Exception):
        raise DagError(str(reply), -1) from reply
    if not isinstance(reply, list) or len(reply) != 3:
        raise DagError(f"unexpected DAG reply {reply!r:.200}", -1)
    for index, op in enumerate(reply):
        if isinstance(op, Exception):
            raise DagError(str(op), index) from op
    try:
        meta = _pairs(reply[2])
        return to_array(str(meta["dtype"]), [int(d) for d in meta["shape"]], meta["blob"])
    except (KeyError, ValueError, TypeError) as e:
        raise DagError(f"unexpected TENSORGET reply in the DAG: {e}", 2) from e


class InFlight:
    """Commands sent by :func:`send_concurrently`, one per connection, replies not yet read."""

    def __init__(self, pool: Any, conns: list[Any]) -> None:
        self._pool = pool
        self._conns = conns

    def __len__(self) -> int:
        return len(self._conns)

    def replies(self) -> list[Any]:
        """The replies in order (error replies as exception instances); connection failures raise."""
        conns, self._conns = self._conns, []
        replies: list[Any] = []
        ok = False
        try:
            for conn in conns:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as e:
                    replies.append(e)
            ok = True
            return replies
        finally:
            for conn in conns:
                if not ok:
                    conn.disconnect()
                self._pool.release(conn)

    def abandon(self) -> None:
        """Drop the connections without reading (the replies are lost; the work may still run)."""
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.disconnect()
            self._pool.release(conn)


def send_concurrently(client: redis.Redis, commands: Sequence[Sequence[Any]]) -> InFlight:
    """Send every command on its own connection and return without waiting for the replies.

    AI.DAGEXECUTE blocks its client until the engine is done, and Redis does not read the next
    command of a blocked client, so DAGs pipelined on ONE connection run one after the other.
    One connection per DAG puts them all in the engine's queue at once, where auto-batching
    (BATCHSIZE) merges them.
    """
    pool = client.connection_pool
    conns: list[Any] = []
    try:
        for cmd in commands:
            conn = pool.get_connection(str(cmd[0]))
            conns.append(conn)
            conn.send_command(*cmd)
    except BaseException:
        InFlight(pool, conns).abandon()
        raise
    return InFlight(pool, conns)


def execute_concurrently(client: redis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send every command on its own connection, then read the replies (in order).

    See :func:`send_concurrently`. Error replies come back as exception instances, not raised;
    connection failures are raised (after dropping the connections involved).
    """
    return send_concurrently(client, commands).replies()


def model_blob(client: redis.Redis, key: str) -> bytes:
    """AI.MODELGET key BLOB as one bytes object (the engine may answer in chunks)."""
    try:
        reply = client.execute_command("AI.MODELGET", key, "BLOB")
    except redis.ResponseError as e:
        raise DagError(f"AI.MODELGET {key} failed: {e}", -1) from e
    if isinstance(reply, list):
        return b"".join(reply)
    return bytes(reply)
