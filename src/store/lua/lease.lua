-- Take or renew the lease of a role, in one atomic step: renew it if ours, else
-- take it if free.
--   KEYS[1] the lease, <prefix><role>:leader
--   ARGV[1] owner, ARGV[2] time to live (ms)
-- Answers 1 while ARGV[1] holds the lease, 0 when another owner does.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
end
