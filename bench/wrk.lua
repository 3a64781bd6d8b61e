-- wrk script for the benchmark. Environment:
--   BENCH_POST=1      send POST /orders with user_id cycling over 1..BENCH_USERS (else the URL's GET)
--   BENCH_LIMIT=n     each thread stops after n responses (else wrk's -d decides)
-- done() prints one line "BENCH {json}" that bench/tools.py parses (wrk's own text is for people).
local post = os.getenv("BENCH_POST") == "1"
local users = tonumber(os.getenv("BENCH_USERS") or "1000")
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local sent, received = 0, 0

if post then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  function request()
    sent = sent + 1
    -- Threads start at different random offsets so they do not hit the same users in lockstep.
    if sent == 1 then sent = math.random(users) end
    return wrk.format(nil, nil, nil,
      string.format('{"user_id": %d, "amount": 1, "description": "bench"}', sent % users + 1))
  end
end

if limit > 0 then
  function response(status, headers, body)
    received = received + 1
    if received >= limit then wrk.thread:stop() end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"latency_p50_us": %d, "latency_p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
