--[[
  Renew a leadership lease if (and only if) the caller still holds it.

  Input:
    KEYS[1] lock    STRING holder id, with a PX lease
    ARGV[1] holder  the caller's id
    ARGV[2] ttl_ms  new lease
  Output:
    1 renewed, 0 not the holder
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
