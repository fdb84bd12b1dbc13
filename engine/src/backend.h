/*
 * backend.h: finding, loading and talking to the TORCH backend shared object.
 */
#ifndef GROUNDWATCH_BACKEND_H
#define GROUNDWATCH_BACKEND_H

#include <string>

#include "backend_api.h"

namespace gw {

/* The loaded TORCH backend, or nullptr. Set once on the main thread, then only read. */
const GwBackendApi *torch_backend();
/* Loads the backend from path (relative paths are taken inside BACKENDSPATH); "" on success,
 * also when one is already loaded. Unless trusted (the operator's TORCH load-time argument),
 * the file must resolve to a path under Config::backend_roots. */
std::string load_torch_backend(const std::string &path, bool trusted);
/* realpath(3) as a string; "" when the path does not resolve. */
std::string resolve_path(const std::string &path);
/* The backend, loading <BACKENDSPATH>/redisai_torch/redisai_torch.so on first use. On failure
 * sets *err to the reply. */
const GwBackendApi *require_torch(std::string *err);

/* The block cache's cap in force: TORCH_CPU_CACHE_MB, or the default rule over maxmemory. */
unsigned long long cpu_cache_bytes();
/* Hands the block cache's cap and BACKEND_MEMORY_LIMIT to the backend (ABI 5; older ones
 * neither cache under our control nor enforce). Call after either setting or maxmemory changes. */
void apply_memory_limits();
/* What the backend reports of its memory; zeros when none is loaded or it predates ABI 5. */
GwBackendMemory backend_memory();

/* A backend error message as a std::string; frees the backend's buffer. */
std::string take_backend_error(char *msg);
/* Frees what a backend handed back inside an output tensor. */
void free_backend_tensor(GwTensor *t);

/* The host side of the ABI (alloc/free/log plus the script callbacks from exec.cpp). */
const GwHostApi *host_api();

}  // namespace gw

#endif
