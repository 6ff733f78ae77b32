-- wrk script for GET endpoints: prints latency percentiles.
-- Usage: wrk -t2 -c300 -d20s -s loadtest/wrk/get.lua 'http://127.0.0.1:8080/api/v1/products/top?limit=5'
function done(summary, latency, requests)
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    io.write(string.format("p%s: %.2f ms\n", p, latency:percentile(p) / 1000))
  end
end
