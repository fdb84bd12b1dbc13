/*
 * commands.h: the AI.* commands, one file a family: cmd_tensor.cpp, cmd_model.cpp,
 * cmd_script.cpp, cmd_dag.cpp and cmd_info.cpp (AI.INFO, AI.CONFIG); cmd_execute.cpp holds the
 * main-thread half every execute command shares, and args.h the helpers of all of them. Every
 * command validates all of its arguments before it changes anything. Declared here: the
 * commands, and what one family uses of another (a DAG's ops are parsed by the tensor, model and
 * script families).
 */
#ifndef GROUNDWATCH_COMMANDS_H
#define GROUNDWATCH_COMMANDS_H

#include <string>
#include <vector>

#include "args.h"
#include "exec.h"
#include "objects.h"
#include "rm_api.h"
#include "tensor.h"

namespace gw {

/* ==== Tensors (cmd_tensor.cpp) ================================================================ */

/* AI.TENSORSET's arguments (argv[0] the command, argv[1] the key) into a new tensor. Every
 * tensor invariant is checked (tensor.h) before anything is allocated. `trusted`: the command is
 * replayed from the AOF or comes from our master, so its data is already held and is checked
 * against the ceiling, not TENSOR_MAX_BYTES (a lower limit must not drop keys on restart); a
 * zero-filled tensor has no data and is always limited. The tensor's bytes are also taken from
 * *budget (see charge_headroom) before anything is allocated. */
std::string parse_tensorset(const Args &a, bool trusted, Tensor **out, long long *budget = nullptr);
/* AI.TENSORGET's options (argv[0] the command, argv[1] the key). */
std::string parse_tensorget(const Args &a, bool *meta, GetFormat *fmt);
/* The AI.TENSORGET reply of t. */
void reply_tensor(RedisModuleCtx *ctx, const Tensor &t, bool meta, GetFormat fmt);

/* ==== Models (cmd_model.cpp) ================================================================== */

/* The extra AI.MODELGET META / AI.INFO pairs of a model stored with OPTIMIZE, and of one that
 * did not load (load_error; nothing for others). */
void reply_optimize_meta(RedisModuleCtx *ctx, const Model &m);
void reply_load_error(RedisModuleCtx *ctx, const Model &m);

/* ==== Execute commands (cmd_execute.cpp) ====================================================== */

/* An execute op's parser: AI.MODELEXECUTE / AI.MODELRUN in cmd_model.cpp, AI.SCRIPTEXECUTE /
 * AI.SCRIPTRUN in cmd_script.cpp. argv[0] is the op's command name; the op gets its model or
 * script (a reference) and its tensor names. In a DAG (in_dag) the tensor names are the DAG's,
 * so the caller checks they exist, and TIMEOUT is refused. */
typedef std::string (*OpParser)(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                                long long *timeout);
std::string parse_modelexecute(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                               long long *timeout);
std::string parse_modelrun(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                           long long *timeout);
std::string parse_scriptexecute(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                                long long *timeout);
std::string parse_scriptrun(RedisModuleCtx *ctx, const Args &a, bool in_dag, Op *op,
                            long long *timeout);

/* A new run of this kind for the caller (its ACL user and memory headroom captured), or nullptr
 * once the error is replied: execute commands block their client, which MULTI, Lua and RM_Call
 * cannot allow. */
Run *new_run_or_reply(RedisModuleCtx *ctx, RunKind kind);
/* Loads the named tensors of the keyspace into the run (a reference each, taken under the GIL
 * so a later DEL cannot pull them from under a worker). */
std::string load_inputs(RedisModuleCtx *ctx, Run *run, const std::vector<std::string> &names);
/* WRONGTYPE when a name holds something other than a tensor. */
std::string check_outputs(RedisModuleCtx *ctx, const std::vector<std::string> &names);
/* Key positions: pos when it is inside the arguments; the keys of one execute op whose
 * arguments are all.argv[base..end) (see cmd_execute.cpp for what a DAG op reports). */
void key_at(RedisModuleCtx *ctx, int pos, int argc);
void op_keys(RedisModuleCtx *ctx, const Args &all, int base, int end, bool dag);
/* Blocks the client and queues the run; the reply comes when it is done. */
int block_and_submit(RedisModuleCtx *ctx, Run *run);
/* A stand-alone AI.MODELEXECUTE / AI.MODELRUN / AI.SCRIPTEXECUTE / AI.SCRIPTRUN. */
int single_execute(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, OpParser parser,
                   RunKind kind);

/* ==== The commands ============================================================================
 * By family; registered, with their flags and key positions, by register_commands
 * (commands.cpp). */

/* cmd_tensor.cpp */
int TensorSet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int TensorGet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
/* cmd_model.cpp */
int ModelStore_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ModelSet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ModelGet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ModelDel_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ModelExecute_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ModelRun_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ModelScan_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
/* cmd_script.cpp */
int ScriptStore_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ScriptSet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ScriptGet_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ScriptDel_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ScriptExecute_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ScriptRun_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ScriptScan_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
/* cmd_dag.cpp */
int DagExecute_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int DagExecuteRO_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int DagRun_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int DagRunRO_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
/* cmd_info.cpp */
int Info_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int Config_Command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);

/* Registers every command (module load). */
int register_commands(RedisModuleCtx *ctx);

}  // namespace gw

#endif
