--[[
  Finish a batch of leased jobs of one partition: acknowledge (schedule the next tick, fixed rate),
  retry (same tick, next attempt, after a backoff) or release (run again now, same attempt).
  A job whose lease token no longer matches (it expired and was recovered) is left alone: stale.

  Input:
    KEYS[1] due     ZSET monitor_id -> run-at ms
    KEYS[2] active  ZSET monitor_id -> lease deadline ms
    KEYS[3] run     HASH monitor_id -> run token
    KEYS[4] conf    HASH monitor_id -> "interval_ms:lease_ms"
    KEYS[4+i]       LIST job history of the i-th job (same hashtag); one per job, in order
    ARGV[1] history length to keep (0 = none); the list is trimmed when it reaches twice that
    ARGV[2] history ttl seconds, set when the list is created
    ARGV[3+4(i-1)..] per job i: id, token, action ('A' ack | 'R' retry | 'L' release), delay_ms
    ARGV[3+4n+i-1]   per job i: history entry (string)
  Output:
    { done, stale, next_due_ms | "-1" }  (next_due: the partition's earliest due time after this)
]]
local function ms(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[1])
local n = #KEYS - 4
local done, stale = 0, 0
for i = 1, n do
  local base = 3 + 4 * (i - 1)
  local id, token, action, delay = ARGV[base], ARGV[base + 1], ARGV[base + 2], tonumber(ARGV[base + 3])
  local entry = ARGV[3 + 4 * n + i - 1]
  if redis.call('HGET', KEYS[3], id) == token then
    done = done + 1
    redis.call('ZREM', KEYS[2], id)
    local conf = redis.call('HGET', KEYS[4], id)
    local tick, attempt = string.match(token, '^(%d+):(%d+)')
    if not conf then
      redis.call('HDEL', KEYS[3], id)  -- monitor disabled or deleted meanwhile
    elseif action == 'A' then
      redis.call('HDEL', KEYS[3], id)
      local interval = tonumber(string.match(conf, '^(%d+)'))
      local k = math.floor((now - tonumber(tick)) / interval) + 1
      redis.call('ZADD', KEYS[1], ms(tonumber(tick) + k * interval), id)
    elseif action == 'R' then
      redis.call('HSET', KEYS[3], id, tick .. ':' .. (tonumber(attempt) + 1))
      redis.call('ZADD', KEYS[1], ms(now + delay), id)
    else
      redis.call('HSET', KEYS[3], id, tick .. ':' .. attempt)
      redis.call('ZADD', KEYS[1], ms(now + delay), id)
    end
  else
    stale = stale + 1
    entry = entry .. ' (stale: lease lost)'
  end
  if keep > 0 then
    -- Cheap upkeep: the TTL is set when the list is made, the list trimmed at twice its cap
    -- (readers take the newest `keep`).
    local len = redis.call('LPUSH', KEYS[4 + i], entry)
    if len == 1 then
      redis.call('EXPIRE', KEYS[4 + i], tonumber(ARGV[2]))
    elseif len > 2 * keep then
      redis.call('LTRIM', KEYS[4 + i], 0, keep - 1)
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return { done, stale, nxt[2] and ms(tonumber(nxt[2])) or '-1' }
