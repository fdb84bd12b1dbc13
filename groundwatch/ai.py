"""The single door to the engine's AI.* commands.

Every AI.* command groundwatch sends is built here, so the RedisAI client library (which pins
redis-py below 5) could be swapped for another in this one module. Arguments are built with the
redisai client's command builders where one exists; DAGs, which groundwatch pipelines by the
hundred, are built directly.
"""

from __future__ import annotations

import enum
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

from groundwatch import connection
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


class Failure(enum.Enum):
    """What kind of engine failure an error is (see FAILURES): what a caller may do about it."""

    POISON_INPUT = "poison_input"  # the engine refused the input tensor itself: never retry
    MODEL_ERROR = "model_error"  # the model raised on this input (a retry may not help)
    MODEL_MISSING = "model_missing"  # the model key is gone (a version switch): re-read the pointer
    TIMEOUT = "timeout"  # waited too long in the engine's queue
    OVERLOAD = "overload"  # Redis or the engine refused work for now (maxmemory, a full queue)
    UNAVAILABLE = "unavailable"  # Redis cannot serve now (loading, failover, a read-only replica)
    OUT_OF_MEMORY = "out_of_memory"  # the backend could not allocate
    OTHER = "other"

    @property
    def system_fault(self) -> bool:
        """Not the input's fault: the same frame may well succeed later."""
        return self in _SYSTEM_FAULTS


_SYSTEM_FAULTS = frozenset(
    {Failure.MODEL_MISSING, Failure.TIMEOUT, Failure.OVERLOAD, Failure.UNAVAILABLE, Failure.OUT_OF_MEMORY}
)

# The one table that classifies engine failures: (DAG ops it applies to, None for any; a lower-case
# fragment of the engine's message, "" for any; the class). First match wins. Ops: 0 TENSORSET,
# 1 MODELEXECUTE, 2 TENSORGET, -1 the whole command (or a command that is not a DAG).
FAILURES: tuple[tuple[frozenset[int] | None, str, Failure], ...] = (
    (None, "model key is empty", Failure.MODEL_MISSING),
    (None, "timedout", Failure.TIMEOUT),
    (None, "timed out", Failure.TIMEOUT),
    (None, "oom ", Failure.OVERLOAD),  # Redis: "OOM command not allowed when used memory > 'maxmemory'"
    (None, "busy", Failure.OVERLOAD),  # a script or module keeps Redis busy
    # the engine's MAX_QUEUE_LENGTH refusal: "the queue of device CPU is full (MAX_QUEUE_LENGTH ...)"
    (None, "(max_queue_length", Failure.OVERLOAD),
    (None, "queue is full", Failure.OVERLOAD),
    (None, "queue full", Failure.OVERLOAD),
    (None, "is loading the dataset", Failure.UNAVAILABLE),  # Redis's LOADING reply
    (None, "masterdown", Failure.UNAVAILABLE),
    (None, "link with master is down", Failure.UNAVAILABLE),
    (None, "readonly", Failure.UNAVAILABLE),
    (None, "read only replica", Failure.UNAVAILABLE),
    (None, "tryagain", Failure.UNAVAILABLE),
    (None, "out of memory", Failure.OUT_OF_MEMORY),
    (None, "can't allocate memory", Failure.OUT_OF_MEMORY),
    (None, "bad_alloc", Failure.OUT_OF_MEMORY),
    (frozenset({0}), "", Failure.POISON_INPUT),
    (frozenset({-1}), "data length", Failure.POISON_INPUT),
    (frozenset({-1}), "invalid data type", Failure.POISON_INPUT),
    (frozenset({-1}), "tensor shape", Failure.POISON_INPUT),
    (frozenset({-1}), "invalid value", Failure.POISON_INPUT),
    (frozenset({-1}), "blob", Failure.POISON_INPUT),
    (frozenset({1}), "", Failure.MODEL_ERROR),
)


def classify(message: str, op: int = -1) -> Failure:
    """The class of an engine failure from its message and failing op (the FAILURES table)."""
    text = message.lower()
    for ops, fragment, kind in FAILURES:
        if (ops is None or op in ops) and fragment in text:
            return kind
    return Failure.OTHER


class EngineError(GroundwatchError):
    """The engine refused a command, or is not loaded; `kind` classifies it (FAILURES). Callers
    ask the error what it is (`kind`, `system_fault`, `poison`, `model_missing`); none matches
    messages of its own."""

    def __init__(self, message: str, op: int = -1) -> None:
        super().__init__(message)
        self.op = op
        self.kind = classify(message, op)

    @property
    def system_fault(self) -> bool:
        """Not the input's fault (the model key is gone, the engine or Redis refuses for load or
        memory): the same input may well succeed later, so it is not charged an attempt."""
        return self.kind.system_fault

    @property
    def model_missing(self) -> bool:
        return self.kind is Failure.MODEL_MISSING

    @property
    def poison(self) -> bool:
        """The engine refused the input itself: no retry will change that."""
        return self.kind is Failure.POISON_INPUT


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
    """AI.* commands on one Redis client (bytes responses expected). On a cluster each command
    goes to the master of its key's slot (the ROUTING key's for a DAG)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def _call(self, *args: Any) -> Any:
        try:
            # a key-first command's key, or a DAG's ROUTING key (dag_command puts it first)
            key = args[2] if str(args[1]).upper() == "ROUTING" else args[1]
            return connection.on_slot(self.client, str(key)).execute_command(*args)
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

    # --- execution ---------------------------------------------------------------------------

    def run(
        self, model_key: str, array: np.ndarray, route_key: str, timeout_ms: int | None = None
    ) -> np.ndarray:
        """One input through the model in one DAG; the tensors never touch the keyspace.

        A refused command or a failing op raises EngineError (DagError) with the engine's message."""
        return dag_result(self._call(*dag_command(model_key, route_key, array, timeout_ms)))


def dag_command(
    model_key: str, route_key: str, array: np.ndarray, timeout_ms: int | None = None
) -> list[Any]:
    """AI.DAGEXECUTE: TENSORSET the input, MODELEXECUTE, TENSORGET META BLOB the output.

    Raw bytes go in as one BLOB argument, so a tile is copied once. ROUTING names a key of the
    feed's slot, so Redis Cluster sends the DAG where the feed's model copy lives.
    """
    data = np.asarray(array)
    if data.dtype.itemsize > 1 and data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))  # the wire is little-endian
    data = np.ascontiguousarray(data)
    args: list[Any] = ["AI.DAGEXECUTE", "ROUTING", route_key]
    if timeout_ms is not None:
        args += ["TIMEOUT", timeout_ms]
    # the array's own bytes (a memoryview, not a copy): the client sends them as they are
    args += ["|>", "AI.TENSORSET", "in", type_name(data.dtype), *data.shape, "BLOB", _blob(data)]
    args += ["|>", "AI.MODELEXECUTE", model_key, "INPUTS", 1, "in", "OUTPUTS", 1, "out"]
    args += ["|>", "AI.TENSORGET", "out", "META", "BLOB"]
    return args


def _blob(data: np.ndarray) -> memoryview | bytes:
    """A C-contiguous array's bytes without a copy (little-endian already: type_name checked)."""
    if data.size == 0:
        return b""
    return memoryview(data.data).cast("B")


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


def dag_result(reply: Any) -> np.ndarray:
    """The output tensor of a :func:`dag_command` reply (the one decoder of DAG replies); a failure
    raises :class:`DagError` with the engine's message and the failing op."""
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


def tile_dags(
    model_key: str, route_key: str, tiles: Sequence[np.ndarray], timeout_ms: int | None = None
) -> list[list[Any]]:
    """One :func:`dag_command` per (C, H, W) tile, each sent as a batch of one [1, C, H, W]."""
    return [dag_command(model_key, route_key, tile[np.newaxis], timeout_ms) for tile in tiles]


def dag_outcomes(replies: Sequence[Any]) -> list[np.ndarray | DagError]:
    """Each DAG reply's output tensor, or the :class:`DagError` saying why it failed."""
    out: list[np.ndarray | DagError] = []
    for reply in replies:
        try:
            out.append(dag_result(reply))
        except DagError as e:
            out.append(e)
    return out


def execute_dags(
    client: redis.Redis,
    model_key: str,
    route_key: str,
    tiles: Sequence[np.ndarray],
    *,
    isolated: bool = False,
    timeout_ms: int | None = None,
) -> list[np.ndarray | DagError]:
    """How the consumers run tiles: one DAG per tile, all at once (the engine batches them across
    clients), or one after the other when `isolated`; outputs or DagErrors, in order."""
    commands = tile_dags(model_key, route_key, tiles, timeout_ms)
    if isolated:
        return dag_outcomes([execute_concurrently(client, [c])[0] for c in commands])
    return dag_outcomes(execute_concurrently(client, commands))
