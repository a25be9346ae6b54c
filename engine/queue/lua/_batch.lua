--[[
  Library, not a script: `--#include _batch` in a script's body is replaced by this text when the
  scripts are loaded (engine/queue/scripts.py), so the scripts share one copy.

  call_list(cmd, k, list): redis.call(cmd, KEYS[k], list...) in chunks of CHUNK arguments (unpack
  has a C stack limit); table replies are concatenated. k must name a declared key.
]]
local unpack = table.unpack or unpack  -- Lua 5.4 (Dragonfly) or 5.1 (Redis)
local CHUNK = 1000                     -- arguments per command; even, so pairs stay whole
local function call_list(cmd, k, list)
  if #list <= CHUNK then return redis.call(cmd, KEYS[k], unpack(list)) end
  local out = {}
  for i = 1, #list, CHUNK do
    local r = redis.call(cmd, KEYS[k], unpack(list, i, math.min(i + CHUNK - 1, #list)))
    if type(r) == 'table' then for j = 1, #r do out[#out + 1] = r[j] end end
  end
  return out
end
