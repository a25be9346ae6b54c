--[[
  Add or update monitors of one partition. A new monitor (or one missing from the queue) is due at
  its next phase tick: the first t >= now with t = phase (mod interval), the phase being spread over
  the interval by the caller (hash of the id). An interval change moves a waiting job to the new
  phase; a job in flight keeps its lease and picks up the new interval when it is acknowledged.

  Input:
    KEYS[1] due     ZSET monitor_id -> run-at ms
    KEYS[2] active  ZSET monitor_id -> lease deadline ms
    KEYS[3] run     HASH monitor_id -> run token
    KEYS[4] conf    HASH monitor_id -> "interval_ms:lease_ms"
    KEYS[5] spec    HASH monitor_id -> encoded MonitorSpec
    ARGV[5(i-1)+1..5i] per monitor i: id, interval_ms, lease_ms, phase_ms, spec
  Output:
    { added, rescheduled }
]]
local function ms(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added, moved = 0, 0
for i = 1, #ARGV, 5 do
  local id, interval, lease, phase = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  local old = redis.call('HGET', KEYS[4], id)
  redis.call('HSET', KEYS[4], id, ARGV[i + 1] .. ':' .. lease)
  redis.call('HSET', KEYS[5], id, ARGV[i + 4])
  local first = now + ((phase - now) % interval)
  if redis.call('ZSCORE', KEYS[2], id) then
    -- in flight: the ack schedules the next tick with the new interval
  elseif redis.call('ZSCORE', KEYS[1], id) then
    local old_interval = old and tonumber(string.match(old, '^(%d+)'))
    if old_interval ~= interval and not redis.call('HGET', KEYS[3], id) then
      redis.call('ZADD', KEYS[1], ms(first), id)
      moved = moved + 1
    end
  else
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZADD', KEYS[1], ms(first), id)
    added = added + 1
  end
end
return { added, moved }
