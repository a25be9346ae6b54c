--[[
  Remove monitors (disabled or deleted) from one partition. A job in flight finishes its check; its
  acknowledgement then finds no conf and does not reschedule it.

  Input:
    KEYS[1] due     ZSET monitor_id -> run-at ms
    KEYS[2] active  ZSET monitor_id -> lease deadline ms
    KEYS[3] run     HASH monitor_id -> run token
    KEYS[4] conf    HASH monitor_id -> "interval_ms:lease_ms"
    KEYS[5] spec    HASH monitor_id -> encoded MonitorSpec
    ARGV[1..n] monitor ids
  Output:
    removed  number of monitors that were present
]]
local removed = 0
for _, id in ipairs(ARGV) do
  removed = removed + redis.call('HDEL', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id)
  redis.call('ZREM', KEYS[1], id)
  if not redis.call('ZSCORE', KEYS[2], id) then redis.call('HDEL', KEYS[3], id) end
end
return removed
