-- Renewal: extend the leases of live requests of one team. A lease already past its
-- expiry is not brought back (its slot may have been handed to someone else).
--
-- KEYS[1]: a name under the team's hash tag (routing); ARGV[1] the tag and ':'.
-- ARGV: base, lease seconds, then 2 values per lease: the concurrency set's name, the
-- lease id. Returns how many leases were extended.
local base, lease_seconds = ARGV[1], tonumber(ARGV[2])
local now = clock()
local expiry = fixed(now + lease_seconds)
local renewed = 0
for o = 3, #ARGV, 2 do
  local key, lease = base .. ARGV[o], ARGV[o + 1]
  local score = redis.call('ZSCORE', key, lease)
  if score and tonumber(score) > now then
    redis.call('ZADD', key, 'XX', expiry, lease)
    redis.call('PEXPIRE', key, math.ceil(lease_seconds * 1000) + 1000)
    renewed = renewed + 1
  end
end
return renewed
