-- Arm a campaign in Redis, or update the settings of one already armed.
--   KEYS[1] meta hash, KEYS[2] outbox stream (same hash slot; the set of armed
--   campaigns lives in another slot and is written by the caller)
--   ARGV[1] total, ARGV[2] starts_at ms, ARGV[3] ends_at ms, ARGV[4] paused (0/1),
--   ARGV[5] issued so far (used only when arming), ARGV[6] relay group
-- The issued counter of an armed campaign is never touched here: only issue.lua
-- moves it, so re-arming can never hand out given-away stock again.
-- Answers 'armed' or 'updated'.
local existed = redis.call('EXISTS', KEYS[1]) == 1
if existed then
  redis.call('HSET', KEYS[1], 'total', ARGV[1], 'starts_at', ARGV[2], 'ends_at', ARGV[3], 'paused', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'total', ARGV[1], 'starts_at', ARGV[2], 'ends_at', ARGV[3], 'paused', ARGV[4], 'issued', ARGV[5])
end
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[2], ARGV[6], '0', 'MKSTREAM')
if not ok and not string.find(tostring(err), 'BUSYGROUP') then
  return redis.error_reply(tostring(err))
end
if existed then
  return 'updated'
end
return 'armed'
