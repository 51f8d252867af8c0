-- wrk script: POST /v1/cancellations with a new JobID each request (wrk runs it per thread).
-- WRK_TOKEN (environment) is the bearer token; the anchor ignores it.
local counter = 0
local token = os.getenv("WRK_TOKEN") or ""
local thread_base = math.random(1, 1000000) * 1000

function request()
  counter = counter + 1
  local body = '{"job_id": ' .. (thread_base + counter) .. ', "products": ["lc"]}'
  return wrk.format("POST", "/v1/cancellations",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
end

function done(summary, latency, requests)
  local statuses = {}
  io.write(string.format("RESULT requests=%d errors_status=%d duration_us=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.errors.status, summary.duration, latency:percentile(50), latency:percentile(99)))
end
