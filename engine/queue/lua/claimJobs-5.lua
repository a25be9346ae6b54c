--[[
  Claim up to ARGV[1] due jobs of one partition and lease each one (atomic).
  A job is in exactly one of `due` or `active`, so a monitor is never in flight twice.

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
local function ms(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local snow = ms(now)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', snow, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local out = { snow, '-1' }
for i = 1, #due, 2 do
  local id = due[i]
  redis.call('ZREM', KEYS[1], id)
  local conf = redis.call('HGET', KEYS[4], id)
  local spec = redis.call('HGET', KEYS[5], id)
  if conf and spec then
    local lease = tonumber(string.match(conf, ':(%d+)$'))
    local tick, attempt
    local run = redis.call('HGET', KEYS[3], id)
    if run then
      tick, attempt = string.match(run, '^(%d+):(%d+)')
    else
      tick, attempt = ms(tonumber(due[i + 1])), '1'
    end
    local token = tick .. ':' .. attempt .. ':' .. ARGV[2] .. ':' .. snow
    redis.call('HSET', KEYS[3], id, token)
    redis.call('ZADD', KEYS[2], ms(now + lease), id)
    out[#out + 1] = id
    out[#out + 1] = tick
    out[#out + 1] = attempt
    out[#out + 1] = token
    out[#out + 1] = spec
  else
    redis.call('HDEL', KEYS[3], id)  -- removed monitor: drop the orphan
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then out[2] = ms(tonumber(nxt[2])) end
return out
