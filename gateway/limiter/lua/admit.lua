-- Admission: check every limit of one team and its key, then record all of them, or
-- nothing at all. The same decisions as MemoryLimiter.admit (gateway/limiter/memory.py).
--
-- KEYS[1]: a name under the team's hash tag; it routes the call to the team's slot.
-- Every name below is ARGV[1] (the tag and ':') followed by a check's name, so every key
-- this script touches is in that one slot.
-- ARGV: base, lease seconds, grace seconds of a day counter, of a month counter, the
-- number of checks n; then 3 values per check, the same for every request of a team
-- and key under the same limits (the caller encodes them once):
--   kind   rate | conc | day | month
--   name   'rpm', 'k:<key>:itpm', 'conc', 'tpd' (a budget's gets ':<day>' / ':<month>')
--   limit  0 refuses everything
-- then the request's own: the lease id ('' when no concurrency limit applies), and 2
-- values per check:
--   cost   what admission adds: GCRA units (capped at the limit), or a budget's charge
--   need   a budget: what must still fit (the input estimate, or its cost)
-- Returns {1 admitted | 0 refused, now, day, month, refused check (1-based; 0),
-- its retry after in seconds (-1: never), then per check the tat after admission (or
-- as it stands, when refused) for rates, '' for the others}.
local base, lease_seconds = ARGV[1], tonumber(ARGV[2])
local day_grace, month_grace = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local lease = ARGV[6 + 3 * n]
local now, seconds = clock()
local cal = calendar(seconds)
local EPSILON, UNIT_SLACK = 1e-6, 1e-4  -- as in rules.py

local failed, wait = 0, 0
-- Keep the refusal with the longest wait (never = -1 beats everything; ties: the first).
local function fail(i, retry)
  if failed == 0 or (wait ~= -1 and (retry == -1 or retry > wait)) then
    failed, wait = i, retry
  end
end

local checks = {}
for i = 1, n do
  local o = 5 + (i - 1) * 3
  local d = 6 + 3 * n + (i - 1) * 2
  local c = {kind = ARGV[o + 1], name = ARGV[o + 2], limit = tonumber(ARGV[o + 3]),
             cost = ARGV[d + 1], need = tonumber(ARGV[d + 2])}
  c.key = base .. c.name
  if c.kind == 'day' then
    c.key = c.key .. ':' .. cal.day
  elseif c.kind == 'month' then
    c.key = c.key .. ':' .. cal.month
  end
  checks[i] = c
  if c.kind == 'rate' then
    local stored = redis.call('GET', c.key)
    local tat = stored and tonumber(stored) or now
    if tat < now then tat = now end
    c.before, c.after = tat, tat
    if c.limit <= 0 then
      fail(i, -1)
    else
      local new = tat + tonumber(c.cost) * 60 / c.limit
      local allow_at = new - 60
      if allow_at > now + math.max(EPSILON, UNIT_SLACK * 60 / c.limit) then fail(i, allow_at - now) else c.after = new end
    end
  elseif c.limit <= 0 then
    fail(i, -1)
  elseif c.kind == 'conc' then
    if redis.call('ZCOUNT', c.key, '(' .. fixed(now), '+inf') >= c.limit then fail(i, 1) end
  else
    local used = tonumber(redis.call('GET', c.key) or '0')
    if used >= c.limit or used + c.need > c.limit then
      fail(i, (c.kind == 'day' and cal.next_day or cal.next_month) - now)
    end
  end
end

if failed == 0 then
  for i = 1, n do
    local c = checks[i]
    if c.kind == 'rate' then
      -- Kept until the bucket is full again (an absent tat means a full bucket).
      redis.call('SET', c.key, fixed(c.after), 'PX', math.ceil((c.after - now) * 1000) + 1000)
    elseif c.kind == 'conc' then
      redis.call('ZREMRANGEBYSCORE', c.key, '-inf', fixed(now))
      redis.call('ZADD', c.key, fixed(now + lease_seconds), lease)
      redis.call('PEXPIRE', c.key, math.ceil(lease_seconds * 1000) + 1000)
    else
      redis.call('INCRBYFLOAT', c.key, c.cost)
      local ends = c.kind == 'day' and cal.next_day + day_grace or cal.next_month + month_grace
      redis.call('EXPIREAT', c.key, ends)
    end
  end
end

local out = {failed == 0 and 1 or 0, fixed(now), cal.day, cal.month, failed, fixed(wait)}
for i = 1, n do
  local c = checks[i]
  if c.kind == 'rate' then
    out[#out + 1] = fixed(failed == 0 and c.after or c.before)
  else
    out[#out + 1] = ''
  end
end
return out
