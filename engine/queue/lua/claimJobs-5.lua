--[[
  Claim up to ARGV[1] due jobs of one partition and lease each one (atomic).
  A job is in exactly one of `due` or `active`, so a monitor is never in flight twice.
  Batched: a fixed number of commands per call whatever the number of jobs (HMGET, variadic
  HSET/ZADD), not one command per job per structure.

  Input:
    KEYS[1] due     ZSET monitor_id -> run-at (ms, server clock)
    KEYS[2] active  ZSET monitor_id -> lease deadline (ms)
    KEYS[3] run     HASH monitor_id -> "tick:attempt" (pending retry) | "tick:attempt:worker:claimed_ms" (leased)
    KEYS[4] conf    HASH monitor_id -> "interval_ms:lease_ms"
    KEYS[5] spec    HASH monitor_id -> encoded MonitorSpec
    ARGV[1] limit   max jobs to claim
    ARGV[2] worker  worker id, recorded in the lease token
  Output:
    { now_ms, next_due_ms | "-1", id, tick_ms, attempt, token, spec, id, ... }  (strings only)
]]
--#include _batch
local function ms(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local snow = ms(now)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', snow, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local out = { snow, '-1' }
local n = math.floor(#due / 2)  -- an integer on Lua 5.4 too (`/` makes floats there)
if n > 0 then
  local ids = {}
  for i = 1, n do ids[i] = due[2 * i - 1] end
  -- From -inf, the range is exactly the first n ranks: one removal for all of them.
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - 1)
  local confs, specs, runs = call_list('HMGET', 4, ids), call_list('HMGET', 5, ids), call_list('HMGET', 3, ids)
  local leased, leases, orphans = {}, {}, {}
  local suffix, lease_at = ':' .. ARGV[2] .. ':' .. snow, {}
  for i = 1, n do
    local id, conf, spec = ids[i], confs[i], specs[i]
    if conf and spec then
      local lease = string.match(conf, ':(%d+)$')
      local deadline = lease_at[lease]
      if not deadline then
        deadline = ms(now + tonumber(lease))
        lease_at[lease] = deadline
      end
      local tick, attempt
      if runs[i] then
        tick, attempt = string.match(runs[i], '^(%d+):(%d+)')
      else
        tick, attempt = ms(tonumber(due[2 * i])), '1'
      end
      local token = tick .. ':' .. attempt .. suffix
      leased[#leased + 1] = id
      leased[#leased + 1] = token
      leases[#leases + 1] = deadline
      leases[#leases + 1] = id
      out[#out + 1] = id
      out[#out + 1] = tick
      out[#out + 1] = attempt
      out[#out + 1] = token
      out[#out + 1] = spec
    else
      orphans[#orphans + 1] = id  -- removed monitor: drop the orphan
    end
  end
  if #leased > 0 then
    call_list('HSET', 3, leased)
    call_list('ZADD', 2, leases)
  end
  if #orphans > 0 then call_list('HDEL', 3, orphans) end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then out[2] = ms(tonumber(nxt[2])) end
return out
