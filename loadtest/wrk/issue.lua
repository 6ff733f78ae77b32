-- wrk script: every request claims a coupon for a new shopper, so the issue path
-- runs its full Lua script (no early "already issued" answers).
-- Usage: wrk -t2 -c300 -d20s -s loadtest/wrk/issue.lua http://127.0.0.1:8080 -- <campaign id>
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  campaign = args[1] or "1"
  counter = 0
  statuses = {}
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/api/v1/campaigns/" .. campaign .. "/issues",
    { ["X-User-Id"] = "wrk-" .. tid .. "-" .. counter })
end

function response(status)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    io.write(string.format("p%s: %.2f ms\n", p, latency:percentile(p) / 1000))
  end
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do io.write(string.format("thread %d: %s x %d\n", t:get("tid"), code, n)) end
  end
end
