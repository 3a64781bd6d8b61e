-- wrk script for the benchmark. Environment:
--   BENCH_POST=1      send POST /orders with user_id cycling over 1..BENCH_USERS (else the URL's GET)
--   BENCH_LIMIT=n     each thread stops after n responses (else wrk's -d decides)
--   BENCH_COUNT_503=1 count the 503 answers (a Lua call per response: only where the figure needs it)
--   BENCH_TOKENS=file bearer tokens, one per line: a POST for user u sends line u, a GET the first line
-- done() prints one line "BENCH {json}" that bench/tools.py parses (wrk's own text is for people).
local post = os.getenv("BENCH_POST") == "1"
local users = tonumber(os.getenv("BENCH_USERS") or "1000")
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local count_503 = os.getenv("BENCH_COUNT_503") == "1"
local sent, received = 0, 0
local tokens = {}
local tokens_file = os.getenv("BENCH_TOKENS") or ""
if tokens_file ~= "" then
  for line in io.lines(tokens_file) do table.insert(tokens, line) end
  wrk.headers["Authorization"] = "Bearer " .. tokens[1]
end
unavailable = 0  -- a global of each thread's Lua state, read back in done() through thread:get
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- wrk.format takes a request's headers instead of wrk.headers, not beside them: each user's set, made once.
local user_headers = {}
function headers_of(user)
  if #tokens == 0 then return nil end
  if not user_headers[user] then
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
    headers["Authorization"] = "Bearer " .. tokens[user]
    user_headers[user] = headers
  end
  return user_headers[user]
end

if post then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  function request()
    sent = sent + 1
    -- Threads start at different random offsets so they do not hit the same users in lockstep.
    if sent == 1 then sent = math.random(users) end
    local user = sent % users + 1
    return wrk.format(nil, nil, headers_of(user),
      string.format('{"user_id": %d, "amount": 1, "description": "bench"}', user))
  end
end

if limit > 0 or count_503 then
  function response(status, headers, body)
    received = received + 1
    if status == 503 then unavailable = unavailable + 1 end
    if limit > 0 and received >= limit then wrk.thread:stop() end
  end
end

-- The share of answers that took longer than `us` microseconds, from wrk's percentiles (bisection).
local function share_above(latency, us)
  if latency.max <= us then return 0 end
  local low, high = 0, 100
  for _ = 1, 40 do
    local mid = (low + high) / 2
    if latency:percentile(mid) > us then high = mid else low = mid end
  end
  return (100 - high) / 100
end

function done(summary, latency, requests)
  local e = summary.errors
  local total_503 = 0
  for _, thread in ipairs(threads) do total_503 = total_503 + (thread:get("unavailable") or 0) end
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"latency_p50_us": %d, "latency_p99_us": %d, "latency_max_us": %d, "over_2s": %d, "timeouts": %d, ' ..
    '"status_503": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max,
    math.floor(share_above(latency, 2000000) * summary.requests + 0.5), e.timeout, total_503))
end
