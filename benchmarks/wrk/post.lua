-- wrk script for benchmarks.load: POST a JSON body with a bearer key, then print one
-- parsable summary line.  Inputs come from the environment (set by benchmarks/load.py):
--   MESHFAST_BENCH_BODY_FILE  path of the JSON request body
--   MESHFAST_BENCH_KEY        API key sent as "Authorization: Bearer <key>"
-- Run by hand:
--   MESHFAST_BENCH_BODY_FILE=body.json wrk -t1 -c32 -d10s -s benchmarks/wrk/post.lua \
--       http://127.0.0.1:8080/v1/chat/completions

local body_file = os.getenv("MESHFAST_BENCH_BODY_FILE")
local key = os.getenv("MESHFAST_BENCH_KEY") or "mesh_live_bench_placeholder"

wrk.method = "POST"
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
else
  wrk.body = '{"model":"bench-chat","messages":[{"role":"user","content":"hi"}]}'
end
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

-- One line, key=value pairs, latencies in microseconds (integers).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "MESHFAST_WRK requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f connect_errors=%d read_errors=%d write_errors=%d status_errors=%d timeouts=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
