-- Issue one coupon of one campaign to one shopper, atomically.
-- All keys share the campaign's hash slot ({c:<id>}), so this runs unchanged on
-- Redis Cluster.
--   KEYS[1] meta hash  (total, starts_at, ends_at [ms], paused, issued)
--   KEYS[2] holders hash (user id -> "code|sequence|issued_at_ms")
--   KEYS[3] outbox stream (one entry per coupon, drained to Kafka by the relay):
--           one field, issued = "event_id|user_id|code|sequence|issued_at_ms|traceparent"
--           (none of these can hold a '|'; one field instead of six is less work for
--           Redis and the relay on every coupon)
--   ARGV[1] user id, ARGV[2] fresh coupon code, ARGV[3] event id, ARGV[4] traceparent
-- Answers {outcome}, {outcome, coupon}, or {'issued', coupon, stock remaining}.
local meta = redis.call('HMGET', KEYS[1], 'total', 'starts_at', 'ends_at', 'paused', 'issued')
if not meta[1] then
  return {'not_armed'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now >= tonumber(meta[3]) then
  return {'ended'}
end
if meta[4] == '1' then
  return {'paused'}
end
if now < tonumber(meta[2]) then
  return {'scheduled'}
end
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  return {'already', held}
end
local issued = tonumber(meta[5])
if issued >= tonumber(meta[1]) then
  return {'sold_out'}
end
local seq = issued + 1
redis.call('HSET', KEYS[1], 'issued', seq)
local coupon = ARGV[2] .. '|' .. seq .. '|' .. now
redis.call('HSET', KEYS[2], ARGV[1], coupon)
redis.call('XADD', KEYS[3], '*', 'issued', ARGV[3] .. '|' .. ARGV[1] .. '|' .. coupon .. '|' .. ARGV[4])
return {'issued', coupon, tostring(tonumber(meta[1]) - seq)}
