-- Settlement: correct what admission charged to what really happened, free the lease,
-- and add the request to the day's usage. The same as MemoryLimiter.settle.
--
-- KEYS[1]: a name under the team's hash tag (routing); ARGV[1] the tag and ':'.
-- ARGV: base, usage field prefix ('<key id>|<model>|'), usage TTL seconds, the usage
-- increments (requests, input, output, cache_read, cache_creation, cost), the lease id,
-- then 3 values per correction:
--   tat   name, seconds   move a GCRA bucket (a refund never takes it past full)
--   zrem  name, -         drop the lease from a concurrency set
--   add   name, delta     correct a budget counter (only while it still exists)
-- Returns the day the usage was recorded under.
local base, prefix, ttl = ARGV[1], ARGV[2], ARGV[3]
local now, seconds = clock()
local cal = calendar(seconds)

local usage = base .. 'usage:' .. cal.day
local fields = {'requests', 'input', 'output', 'cache_read', 'cache_creation'}
for i, field in ipairs(fields) do
  redis.call('HINCRBY', usage, prefix .. field, ARGV[3 + i])
end
redis.call('HINCRBYFLOAT', usage, prefix .. 'cost', ARGV[9])
redis.call('EXPIRE', usage, ttl)

local lease = ARGV[10]
for o = 11, #ARGV, 3 do
  local op, key, value = ARGV[o], base .. ARGV[o + 1], ARGV[o + 2]
  if op == 'zrem' then
    redis.call('ZREM', key, lease)
  elseif op == 'tat' then
    local stored = redis.call('GET', key)
    local tat = stored and tonumber(stored) or now
    if tat < now then tat = now end
    tat = tat + tonumber(value)
    if tat > now then
      redis.call('SET', key, fixed(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
    else
      redis.call('DEL', key)
    end
  elseif op == 'add' then
    if redis.call('EXISTS', key) == 1 then redis.call('INCRBYFLOAT', key, value) end
  end
end
return cal.day
