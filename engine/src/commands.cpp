/*
 * commands.cpp: the command table: every AI.* command's name, flags and key positions (first,
 * last, step; 0, 0, 0 for the commands that report theirs through the getkeys API or have none).
 */
#include "commands.h"

#include "rm_api.h"

namespace gw {

int register_commands(RedisModuleCtx *ctx) {
  struct Cmd {
    const char *name;
    RedisModuleCmdFunc fn;
    const char *flags;
    int first, last, step;
  };
  const Cmd cmds[] = {
      {"ai.tensorset", TensorSet_Command, "write deny-oom", 1, 1, 1},
      {"ai.tensorget", TensorGet_Command, "readonly", 1, 1, 1},
      {"ai.modelstore", ModelStore_Command, "write deny-oom", 1, 1, 1},
      {"ai.modelset", ModelSet_Command, "write deny-oom", 1, 1, 1},
      {"ai.modelget", ModelGet_Command, "readonly", 1, 1, 1},
      {"ai.modeldel", ModelDel_Command, "write", 1, 1, 1},
      {"ai.modelexecute", ModelExecute_Command, "write deny-oom getkeys-api", 1, 1, 1},
      {"ai.modelrun", ModelRun_Command, "write deny-oom getkeys-api", 1, 1, 1},
      {"ai.scriptstore", ScriptStore_Command, "write deny-oom", 1, 1, 1},
      {"ai.scriptset", ScriptSet_Command, "write deny-oom", 1, 1, 1},
      {"ai.scriptget", ScriptGet_Command, "readonly", 1, 1, 1},
      {"ai.scriptdel", ScriptDel_Command, "write", 1, 1, 1},
      {"ai.scriptexecute", ScriptExecute_Command, "write deny-oom getkeys-api", 1, 1, 1},
      {"ai.scriptrun", ScriptRun_Command, "write deny-oom getkeys-api", 1, 1, 1},
      {"ai.dagexecute", DagExecute_Command, "write deny-oom getkeys-api", 0, 0, 0},
      {"ai.dagexecute_ro", DagExecuteRO_Command, "readonly getkeys-api", 0, 0, 0},
      {"ai.dagrun", DagRun_Command, "write deny-oom getkeys-api", 0, 0, 0},
      {"ai.dagrun_ro", DagRunRO_Command, "readonly getkeys-api", 0, 0, 0},
      {"ai.info", Info_Command, "readonly", 1, 1, 1},
      {"ai.config", Config_Command, "admin", 0, 0, 0},
      {"ai._modelscan", ModelScan_Command, "readonly", 0, 0, 0},
      {"ai._scriptscan", ScriptScan_Command, "readonly", 0, 0, 0},
  };
  for (const Cmd &c : cmds) {
    if (RedisModule_CreateCommand(ctx, c.name, c.fn, c.flags, c.first, c.last, c.step) !=
        REDISMODULE_OK) {
      RedisModule_Log(ctx, "warning", "could not register %s", c.name);
      return REDISMODULE_ERR;
    }
  }
  return REDISMODULE_OK;
}

}  // namespace gw
