--[[
  Put leased jobs back on the queue to run now (same tick, same attempt): those whose lease has
  expired, or (ARGV[2] set) every job leased by that worker, whose process is known to be dead.

  Input:
    KEYS[1] due     ZSET monitor_id -> run-at ms
    KEYS[2] active  ZSET monitor_id -> lease deadline ms
    KEYS[3] run     HASH monitor_id -> run token
    KEYS[4] conf    HASH monitor_id -> "interval_ms:lease_ms"
    ARGV[1] limit   max jobs to recover in one call
    ARGV[2] worker  '' = expired leases only; else release that worker's leases now
  Output:
    { id, token, id, token, ... }  the jobs recovered (the caller records history)
]]
local function ms(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local ids
if ARGV[2] == '' then
  ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ms(now), 'LIMIT', 0, limit)
else
  ids = redis.call('ZRANGE', KEYS[2], 0, -1)
end
local needle = ':' .. ARGV[2] .. ':'
local out = {}
for _, id in ipairs(ids) do
  local token = redis.call('HGET', KEYS[3], id) or ''
  if ARGV[2] == '' or string.find(token, needle, 1, true) then
    redis.call('ZREM', KEYS[2], id)
    local tick, attempt = string.match(token, '^(%d+):(%d+)')
    if tick and redis.call('HEXISTS', KEYS[4], id) == 1 then
      redis.call('HSET', KEYS[3], id, tick .. ':' .. attempt)
      redis.call('ZADD', KEYS[1], ms(now), id)
    else
      redis.call('HDEL', KEYS[3], id)
    end
    out[#out + 1] = id
    out[#out + 1] = token
    if #out >= 2 * limit then break end
  end
end
return out
