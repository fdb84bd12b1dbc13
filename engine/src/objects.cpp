/*
 * objects.cpp: making models and scripts through the backend (for the store commands and for
 * RDB/AOF loading alike), releasing them, the device rule, and the command form of a tensor
 * (AOF rewrite and replication).
 */
#include "objects.h"

#include <cctype>
#include <cstring>
#include <string>
#include <vector>

#include "backend.h"
#include "backend_api.h"
#include "rm_api.h"
#include "tensor.h"

namespace gw {

/* ==== Devices ================================================================================= */

bool valid_device(const std::string &device) {
  if (device.size() >= 10) return false;
  std::string d = device;
  for (char &c : d) c = static_cast<char>(toupper(static_cast<unsigned char>(c)));
  if (d == "CPU" || d == "GPU") return true;
  if (d.compare(0, 4, "CPU:") != 0 && d.compare(0, 4, "GPU:") != 0) return false;
  for (size_t i = 4; i < d.size(); i++)
    if (!isdigit(static_cast<unsigned char>(d[i]))) return false;
  return true;
}

std::string device_queue(const std::string &device) {
  std::string d = device;
  for (char &c : d) c = static_cast<char>(toupper(static_cast<unsigned char>(c)));
  /* One spelling per device ("CPU:007" is "CPU:7"): each distinct name gets a queue and
   * threads of its own. */
  if (d.size() > 4 && d[3] == ':') {
    size_t nz = d.find_first_not_of('0', 4);
    d = d.substr(0, 4) + (nz == std::string::npos ? std::string("0") : d.substr(nz));
  }
  return d;
}

/* ==== Models ================================================================================== */

namespace {

/* A model holding its record, not loaded yet (no handle); takes blob. */
Model *model_of_record(const std::string &device, const std::string &tag, long long batchsize,
                       long long minbatchsize, long long minbatchtimeout, char *blob,
                       size_t bloblen, bool optimize) {
  Model *m = new Model();
  m->device = device;
  m->queue = device_queue(device);
  m->tag = tag;
  m->batchsize = batchsize;
  m->minbatchsize = minbatchsize;
  m->minbatchtimeout = minbatchtimeout;
  m->blob = blob;
  m->bloblen = bloblen;
  m->optimize = optimize;
  return m;
}

}  // namespace

Model *failed_model(const std::string &device, const std::string &tag, long long batchsize,
                    long long minbatchsize, long long minbatchtimeout, char *blob, size_t bloblen,
                    bool optimize, const std::string &err) {
  Model *m = model_of_record(device, tag, batchsize, minbatchsize, minbatchtimeout, blob, bloblen,
                             optimize);
  m->load_error = err.compare(0, 4, "ERR ") == 0 ? err.substr(4) : err;
  if (optimize) m->optimize_status = "the model did not load";
  return m;
}

std::string model_unusable(const Model &m) {
  if (m.load_error.empty()) return {};
  return "ERR this model did not load and cannot run: " + m.load_error +
         " (store it again with AI.MODELSTORE)";
}

std::string create_model(const std::string &device, const std::string &tag, long long batchsize,
                         long long minbatchsize, long long minbatchtimeout, char *blob,
                         size_t bloblen, Model **out, bool optimize, bool keep_failed) {
  std::string err;
  const GwBackendApi *be = require_torch(&err);
  void *handle = nullptr;
  std::string queue = device_queue(device);
  char *e = be ? be->model_load(blob, bloblen, queue.c_str(), &handle) : nullptr;
  if (e) err = "ERR " + take_backend_error(e);
  if (!be || e) {
    if (keep_failed) {
      *out = failed_model(device, tag, batchsize, minbatchsize, minbatchtimeout, blob, bloblen,
                          optimize, err);
    } else {
      mem_free(blob);
    }
    return err;
  }
  Model *m = model_of_record(device, tag, batchsize, minbatchsize, minbatchtimeout, blob, bloblen,
                             optimize);
  m->handle = handle;
  size_t nin = be->model_ninputs(handle);
  for (size_t i = 0; i < nin; i++) {
    const char *n = be->model_input_name(handle, i);
    m->inputs.push_back(n ? n : "");
  }
  m->noutputs = be->model_noutputs(handle);
  if (optimize) {
    if (be->abi_version < 2 || !be->model_optimize) {
      m->optimize_status = "the TORCH backend cannot optimise models";
    } else {
      char *why = be->model_optimize(handle);
      m->optimize_status = why ? take_backend_error(why) : "ok";
    }
    if (m->optimize_status != "ok")
      RedisModule_Log(nullptr, "warning", "model stored unoptimised: %s",
                      m->optimize_status.c_str());
  }
  m->weights = be->model_memory(handle);
  torch_loaded.models.add(m->weights);
  *out = m;
  return {};
}

/* ==== Scripts ================================================================================= */

namespace {

/* RedisAI 1.2's checks of one entry point, in its order and words. A backend before ABI 4 cannot
 * report parameters, so only existence is checked then. */
std::string check_entry_point(const GwBackendApi *be, const void *script, const std::string &fn) {
  if (be->abi_version < 4 || !be->script_function_params) {
    if (be->script_has_function(script, fn.c_str())) return {};
    return "ERR Function " + fn + " does not exist in the given script.";
  }
  int32_t kinds[3] = {GW_PARAM_OTHER, GW_PARAM_OTHER, GW_PARAM_OTHER};
  long long n = be->script_function_params(script, fn.c_str(), kinds, 3);
  if (n < 0) return "ERR Function " + fn + " does not exist in the given script.";
  if (n != 3)
    return "ERR Wrong number of inputs in function " + fn + ". Expected 3 but was " +
           std::to_string(n);
  if (kinds[0] != GW_PARAM_TENSOR_LIST || kinds[1] != GW_PARAM_STRING_LIST ||
      kinds[2] != GW_PARAM_STRING_LIST)
    return "ERR Wrong inputs type in function " + fn +
           ". Expected signature similar to: def " + fn +
           "(tensors: List[Tensor], keys: List[str], args: List[str])";
  return {};
}

}  // namespace

std::string script_unusable(const Script &s) {
  if (s.load_error.empty()) return {};
  return "ERR this script did not load and cannot run: " + s.load_error +
         " (store it again with AI.SCRIPTSTORE)";
}

std::string create_script(const std::string &device, const std::string &tag,
                          const std::string &source, const std::vector<std::string> &entry_points,
                          Script **out, bool keep_failed) {
  std::string err;
  const GwBackendApi *be = require_torch(&err);
  void *handle = nullptr;
  std::string queue = device_queue(device);
  if (be) {
    char *e = be->script_compile(source.data(), source.size(), queue.c_str(), &handle);
    if (e) err = "ERR " + take_backend_error(e);
  }
  for (size_t i = 0; handle && i < entry_points.size(); i++) {
    std::string why = check_entry_point(be, handle, entry_points[i]);
    if (!why.empty()) {
      be->script_free(handle);
      handle = nullptr;
      err = why;
    }
  }
  if (!handle && !keep_failed) return err;
  Script *s = new Script();
  s->device = device;
  s->queue = queue;
  s->tag = tag;
  s->source = source;
  s->entry_points = entry_points;
  s->handle = handle;
  if (!handle) s->load_error = err.compare(0, 4, "ERR ") == 0 ? err.substr(4) : err;
  if (handle) {
    s->weights = be->abi_version >= 5 ? be->script_memory(handle) : 0;
    torch_loaded.scripts.add(s->weights);
  }
  *out = s;
  return err;
}

/* ==== Model and script lifetime =============================================================== */

void Model::release() {
  if (refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (handle && torch_backend()) {
    torch_backend()->model_free(handle);
    torch_loaded.models.remove(weights);
  }
  if (blob) mem_free(blob);
  delete this;
}

void Script::release() {
  if (refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (handle && torch_backend()) {
    torch_backend()->script_free(handle);
    torch_loaded.scripts.remove(weights);
  }
  delete this;
}

/* ==== The command form of a tensor ============================================================ */

std::vector<RedisModuleString *> tensorset_args(RedisModuleCtx *ctx, const char *key, size_t keylen,
                                                const Tensor &t) {
  std::vector<RedisModuleString *> v;
  v.push_back(RedisModule_CreateString(ctx, key, keylen));
  const char *tn = dtype_info(t.dtype).name;
  v.push_back(RedisModule_CreateString(ctx, tn, strlen(tn)));
  for (int64_t d : t.shape) {
    std::string s = std::to_string(d);
    v.push_back(RedisModule_CreateString(ctx, s.data(), s.size()));
  }
  v.push_back(RedisModule_CreateString(ctx, "BLOB", 4));
  v.push_back(RedisModule_CreateString(ctx, t.data, t.nbytes));
  return v;
}

}  // namespace gw
