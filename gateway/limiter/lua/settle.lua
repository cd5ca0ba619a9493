-- Settlement: correct what admission charged to what really happened, free the lease,
-- and add the request to the day's usage. The same as MemoryLimiter.settle.
--
-- KEYS[1]: a name under the team's hash tag (routing); ARGV[1] the tag and ':'.
-- ARGV: base, usage TTL seconds, the number of buckets n, then 2 values per bucket the
-- admission charged, the same for every request of a team and key under the same limits
-- on one day (the caller encodes them once):
--   op    tat    move a GCRA bucket (a refund never takes it past full)
--         zrem   drop the lease from a concurrency set
--         add    correct a budget counter (only while it still exists)
--   name  the bucket's
-- then the request's own: usage field prefix ('<key id>|<model>|'), the lease id, the
-- usage increments (requests, input, output, cache_read, cache_creation, cost), and per
-- bucket its value: seconds (tat) or delta (add); 0 = nothing to correct.
-- Returns the day the usage was recorded under.
local base, ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local own = 3 + 2 * n
local prefix, lease = ARGV[own + 1], ARGV[own + 2]
local now, seconds = clock()
local cal = calendar(seconds)

local usage = base .. 'usage:' .. cal.day
local fields = {'requests', 'input', 'output', 'cache_read', 'cache_creation'}
for i, field in ipairs(fields) do
  redis.call('HINCRBY', usage, prefix .. field, ARGV[own + 2 + i])
end
redis.call('HINCRBYFLOAT', usage, prefix .. 'cost', ARGV[own + 8])
redis.call('EXPIRE', usage, ttl)

for i = 1, n do
  local op, key, value = ARGV[2 + 2 * i], base .. ARGV[3 + 2 * i], ARGV[own + 8 + i]
  if op == 'zrem' then
    redis.call('ZREM', key, lease)
  elseif tonumber(value) == 0 then
    -- exact already
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
