--[[
  Finish a batch of leased jobs of one partition: acknowledge (schedule the next tick, fixed rate),
  retry (same tick, next attempt, after a backoff) or release (run again now, same attempt).
  A job whose lease token no longer matches (it expired and was recovered) is left alone: stale.
  Batched: HMGET and variadic ZREM/HDEL/HSET/ZADD for the whole batch; one LPUSH per job (its own
  history list). The same job twice in one batch counts as finished once, then stale.

  Input:
    KEYS[1] due     ZSET monitor_id -> run-at ms
    KEYS[2] active  ZSET monitor_id -> lease deadline ms
    KEYS[3] run     HASH monitor_id -> run token
    KEYS[4] conf    HASH monitor_id -> "interval_ms:lease_ms"
    KEYS[4+i]       LIST job history of the i-th job (same hashtag); one per job, in order
    ARGV[1] history length to keep (0 = none); the list is trimmed when it passes keep + keep/4
    ARGV[2] history ttl seconds, set when the list is created
    ARGV[2+i]       job i: "id|action|delay_ms|token|detail"  (action 'A' ack | 'R' retry |
                    'L' release; the history entry stored is "token|detail", "!" first if stale)
  Output:
    { done, stale, next_due_ms | "-1" }  (next_due: the partition's earliest due time after this)
]]
--#include _batch
local function ms(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[1])
local slack = keep + math.max(1, math.floor(keep / 4))
local n = #KEYS - 4
local ids, actions, delays, tokens, entries = {}, {}, {}, {}, {}
for i = 1, n do
  local a = ARGV[2 + i]
  local id, action, delay, at = string.match(a, '^(%d+)|(%u)|(%d+)|()')
  ids[i], actions[i], delays[i] = id, action, tonumber(delay)
  tokens[i] = string.sub(a, at, string.find(a, '|', at, true) - 1)
  entries[i] = string.sub(a, at)
end
local runs, confs = call_list('HMGET', 3, ids), call_list('HMGET', 4, ids)
local seen, unleased, dropped, pending, queued = {}, {}, {}, {}, {}
local done, stale = 0, 0
for i = 1, n do
  local id, token, entry = ids[i], tokens[i], entries[i]
  if runs[i] == token and not seen[id] then
    seen[id] = true
    done = done + 1
    unleased[#unleased + 1] = id
    local tick, attempt = string.match(token, '^(%d+):(%d+)')
    local conf = confs[i]
    if not conf then
      dropped[#dropped + 1] = id  -- monitor disabled or deleted meanwhile
    elseif actions[i] == 'A' then
      dropped[#dropped + 1] = id
      local interval = tonumber(string.match(conf, '^(%d+)'))
      local k = math.floor((now - tonumber(tick)) / interval) + 1
      queued[#queued + 1] = ms(tonumber(tick) + k * interval)
      queued[#queued + 1] = id
    else
      if actions[i] == 'R' then attempt = tonumber(attempt) + 1 end
      pending[#pending + 1] = id
      pending[#pending + 1] = tick .. ':' .. attempt
      queued[#queued + 1] = ms(now + delays[i])
      queued[#queued + 1] = id
    end
  else
    stale = stale + 1
    entry = '!' .. entry
  end
  if keep > 0 then
    -- Cheap upkeep: the TTL is set when the list is made; the list is trimmed back to `keep`
    -- once it passes keep + keep/4 (readers take the newest `keep`).
    local len = redis.call('LPUSH', KEYS[4 + i], entry)
    if len == 1 then
      redis.call('EXPIRE', KEYS[4 + i], tonumber(ARGV[2]))
    elseif len > slack then
      redis.call('LTRIM', KEYS[4 + i], 0, keep - 1)
    end
  end
end
if #unleased > 0 then call_list('ZREM', 2, unleased) end
if #dropped > 0 then call_list('HDEL', 3, dropped) end
if #pending > 0 then call_list('HSET', 3, pending) end
if #queued > 0 then call_list('ZADD', 1, queued) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return { done, stale, nxt[2] and ms(tonumber(nxt[2])) or '-1' }
