-- Bring an armed campaign's Redis state up to what MySQL knows (Redis lost writes:
-- a restart without persistence, a failover without the WAIT mode).
--   KEYS[1] meta hash, KEYS[2] holders hash
--   ARGV[1] issued floor (MySQL's count or highest sequence)
--   ARGV[2..] pairs: user id, "code|sequence|issued_at_ms"
-- A shopper Redis already knows keeps Redis's coupon (HSETNX); the issued counter
-- only ever grows, so stock given away is never handed out again.
-- Answers the number of holders restored, or -1 if the campaign is not armed.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local restored = 0
for i = 2, #ARGV, 2 do
  restored = restored + redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
end
local issued = tonumber(redis.call('HGET', KEYS[1], 'issued') or '0')
if tonumber(ARGV[1]) > issued then
  redis.call('HSET', KEYS[1], 'issued', ARGV[1])
end
return restored
