/*
 * backend_api.h: the boundary between the engine module and a backend shared object.
 *
 * The module (engine.so) never links libtorch: it dlopen()s
 * <BACKENDSPATH>/redisai_torch/redisai_torch.so and calls gw_backend_init(). Everything that
 * crosses this line is plain C so that the two sides can be built, upgraded and sanitised
 * independently.
 *
 * Memory rule: whatever a backend hands back (error strings, output tensors and their shapes)
 * is allocated with GwHostApi.alloc and released by the module with GwHostApi.free. The module
 * routes these through RedisModule_Alloc so tensors count against maxmemory and INFO memory.
 *
 * Error rule: functions that can fail return NULL on success, or an error message (allocated
 * with GwHostApi.alloc, no "ERR " prefix) that the module sends to the client as is.
 */
#ifndef GROUNDWATCH_BACKEND_API_H
#define GROUNDWATCH_BACKEND_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 2 appended model_optimize, 3 set_execution_timeout, 4 script_function_params, 5 the
 * memory figures and limits; the module still accepts version-1 to version-4 backends
 * (without the later entries). */
#define GW_BACKEND_ABI_VERSION 5
#define GW_BACKEND_ABI_MIN_VERSION 1

/* Element types, in the order of the protocol's TYPE names. */
typedef enum {
  GW_DTYPE_FLOAT = 0,
  GW_DTYPE_DOUBLE = 1,
  GW_DTYPE_INT8 = 2,
  GW_DTYPE_INT16 = 3,
  GW_DTYPE_INT32 = 4,
  GW_DTYPE_INT64 = 5,
  GW_DTYPE_UINT8 = 6,
  GW_DTYPE_UINT16 = 7,
  GW_DTYPE_BOOL = 8,
  GW_DTYPE_STRING = 9
} GwDType;

/* A dense, C-order, little-endian tensor. As an input it is a borrowed view; as an output the
 * backend fills shape and data with GwHostApi.alloc'd buffers that the module then owns. */
typedef struct {
  int32_t dtype;  /* GwDType */
  int32_t ndim;
  int64_t *shape; /* ndim entries */
  void *data;     /* nbytes bytes */
  size_t nbytes;
} GwTensor;

/* What script_function_params reports for each parameter of a script function: the types
 * RedisAI's entry-point and best-effort rules tell apart. */
typedef enum {
  GW_PARAM_OTHER = 0,
  GW_PARAM_TENSOR = 1,
  GW_PARAM_TENSOR_LIST = 2, /* List[Tensor] */
  GW_PARAM_STRING_LIST = 3  /* List[str] */
} GwParamKind;

/* A Redis reply converted for scripts calling redis.execute(). */
typedef enum {
  GW_REPLY_NIL = 0,
  GW_REPLY_INTEGER = 1,
  GW_REPLY_STRING = 2, /* bulk or simple string */
  GW_REPLY_ERROR = 3,
  GW_REPLY_ARRAY = 4,
  GW_REPLY_DOUBLE = 5
} GwReplyType;

typedef struct GwReply {
  int32_t type; /* GwReplyType */
  long long integer;
  double dbl;
  char *str; /* STRING / ERROR, len bytes, NUL-terminated */
  size_t len;
  struct GwReply *elements; /* ARRAY */
  size_t nelements;
} GwReply;

/* What the module offers a backend. call_ctx is the opaque value the module passed to
 * script_run; the backend hands it back unchanged from inside a running script. */
typedef struct {
  void *(*alloc)(size_t bytes);
  void (*free)(void *ptr);
  /* level: "debug", "verbose", "notice" or "warning". */
  void (*log)(const char *level, const char *message);
  /* redis.execute(cmd, args...) from a script: runs one non-blocking command under the GIL. */
  char *(*redis_execute)(void *call_ctx, int argc, const char *const *argv, const size_t *argvlen,
                         GwReply *reply);
  void (*reply_free)(GwReply *reply);
  /* redisAI.model_execute(key, inputs, nout) from a script: runs a stored model synchronously. */
  char *(*model_execute)(void *call_ctx, const char *key, size_t keylen, const GwTensor *inputs,
                         size_t ninputs, size_t noutputs, GwTensor *outputs);
} GwHostApi;

/* The backend's CPU memory outside Redis's allocator (ABI 5), for INFO MODULES. */
typedef struct {
  uint64_t allocated_bytes;   /* live CPU tensor storage: weights, tensors of runs, the rest */
  uint64_t run_bytes;         /* of which allocated by threads inside model_run/script_run */
  uint64_t run_peak_bytes;    /* the highest run_bytes since the backend started */
  uint64_t run_input_bytes;   /* inputs of the runs in progress (module memory, borrowed) */
  uint64_t cache_bytes;       /* freed large blocks kept for reuse (not in allocated_bytes) */
  uint64_t cache_limit_bytes; /* the block cache's cap in force */
  uint64_t memory_limit_bytes; /* BACKEND_MEMORY_LIMIT in force, 0: none */
  uint64_t refused_allocations; /* allocations the limit refused since the backend started */
} GwBackendMemory;

/* What a backend offers the module. Every function pointer is set. Models and scripts may be
 * run concurrently from several worker threads. */
typedef struct {
  uint32_t abi_version; /* GW_BACKEND_ABI_VERSION */
  const char *name;     /* "TORCH" */
  const char *(*version)(void); /* e.g. "2.13.0", reported as Torch_version */
  /* Thread pools; 0 keeps the library default. Called once, before any model or script runs. */
  void (*configure)(int intra_op_threads, int inter_op_threads);

  /* device: "CPU", "GPU", "CPU:n" or "GPU:n", already upper-cased by the module. */
  char *(*model_load)(const void *blob, size_t len, const char *device, void **model);
  void (*model_free)(void *model);
  size_t (*model_ninputs)(const void *model);
  const char *(*model_input_name)(const void *model, size_t index);
  size_t (*model_noutputs)(const void *model);
  /* Bytes of parameters and buffers the loaded model holds (for MEMORY USAGE). */
  size_t (*model_memory)(const void *model);
  /* Runs forward(). Fails with a message when ninputs/noutputs do not match the model. */
  char *(*model_run)(void *model, const GwTensor *inputs, size_t ninputs, GwTensor *outputs,
                     size_t noutputs);

  char *(*script_compile)(const char *source, size_t len, const char *device, void **script);
  void (*script_free)(void *script);
  int (*script_has_function)(const void *script, const char *name);
  /* Runs fn(tensors, keys, args) when fn has that signature; any other function in RedisAI's
   * best-effort mode (each Tensor parameter takes the next input, a List[Tensor] the rest;
   * keys and args are not passed). A missing fn fails with "Function does not exist: <fn>".
   * *outputs is an alloc'd array of *noutputs tensors. */
  char *(*script_run)(void *script, const char *fn, const GwTensor *inputs, size_t ninputs,
                      const char *const *keys, size_t nkeys, const char *const *args, size_t nargs,
                      void *call_ctx, GwTensor **outputs, size_t *noutputs);

  /* ABI 2 and later only (check abi_version first). Freezes a loaded model and runs the
   * inference optimisation passes on it, in place, before the model is first run. NULL on
   * success; otherwise the reason, and the model is left as it was loaded (still usable). */
  char *(*model_optimize)(void *model);

  /* ABI 3 and later only. MODEL_EXECUTION_TIMEOUT in ms (0: none), set once after init: a
   * model_run or script_run past it fails with an error that says so. The backend stops the
   * run at its next interruption point (see engine/backend/README.md), or at its end. */
  void (*set_execution_timeout)(long long ms);

  /* ABI 4 and later only. The parameters of the script's function `name` (without defaults
   * or `self`: every declared parameter): returns their number and writes the GwParamKind of
   * the first min(number, max) into kinds; -1 when the script has no such function. */
  long long (*script_function_params)(const void *script, const char *name, int32_t *kinds,
                                      size_t max);

  /* ABI 5 and later only. */
  void (*memory_stats)(GwBackendMemory *out);
  /* cache_bytes caps the block cache (0 turns it off; lowering it frees blocks at once);
   * limit_bytes (0: none) bounds what runs hold: their inputs, the tensors they allocate and
   * the block cache together. An allocation inside a run that would pass it first empties the
   * cache, then fails the run with a message naming BACKEND_MEMORY_LIMIT. */
  void (*set_memory_limits)(size_t cache_bytes, size_t limit_bytes);
  /* Bytes of the tensor constants a compiled script holds. */
  size_t (*script_memory)(const void *script);
} GwBackendApi;

/* The one symbol a backend exports. Returns NULL when it cannot start (the reason is logged). */
typedef const GwBackendApi *(*GwBackendInitFn)(const GwHostApi *host);
#define GW_BACKEND_INIT_SYMBOL "gw_backend_init"

#ifdef __cplusplus
}
#endif

#endif
