-- wrk-report.lua: owned by bench-scripts/compare.
-- At the end of a wrk run, prints one line "PERCORE_WRK_JSON {...}" holding the
-- request count, duration, error counters and latency percentiles (in µs,
-- including p99.9 and p99.99, which wrk's --latency output lacks).
local percentiles = {50, 75, 90, 95, 99, 99.9, 99.99}

done = function(summary, latency, requests)
  local e = summary.errors
  local out = {}
  out[#out + 1] = string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"max":%d,"mean":%.2f,"stdev":%.2f',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev)
  for _, p in ipairs(percentiles) do
    out[#out + 1] = string.format(',"p%s":%d', tostring(p), latency:percentile(p))
  end
  out[#out + 1] = '}}'
  io.write("PERCORE_WRK_JSON " .. table.concat(out) .. "\n")
end
