-- wrk script for bench/compare.py. Every request of a run is prebuilt in init() from the
-- file named by BENCH_REQUESTS (one request per line: METHOD<TAB>PATH<TAB>BODY), so the
-- per-request Lua cost is one table lookup. Responses that are not 200, and GraphQL answers
-- without "calls", count as failures (the sandbox's history holds calls in an undocumented
-- state, which come with an "errors" entry beside the data by design; with BENCH_STRICT=1,
-- as bench/peers.py sets for its fake upstream, an "errors" entry is a failure too). done()
-- prints one BENCH_JSON line.

local auth = os.getenv("BENCH_AUTH")
local user_id = os.getenv("BENCH_USER_ID")
local strict = os.getenv("BENCH_STRICT") == "1"
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local reqs = {}
local counter = 0

function init(args)
  failures = 0
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    local method, path, body = line:match("^(%u+)\t([^\t]*)\t?(.*)$")
    local headers = { ["Authorization"] = auth, ["X-Catapult-User-Id"] = user_id }
    if body ~= "" then
      headers["Content-Type"] = "application/json"
    else
      body = nil
    end
    table.insert(reqs, wrk.format(method, path, headers, body))
  end
end

function request()
  counter = counter + 1
  return reqs[(counter % #reqs) + 1]
end

function response(status, headers, body)
  if status ~= 200 then
    failures = failures + 1
  elseif body:sub(1, 1) == "{" and not body:find('"calls"', 1, true) then
    failures = failures + 1
  elseif strict and body:sub(1, 1) == "{" and body:find('"errors"', 1, true) then
    failures = failures + 1
  end
end

function done(summary, latency, requests)
  local failed = 0
  for _, t in ipairs(threads) do
    failed = failed + (t:get("failures") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"failures":%d,"socket_errors":%d,'
      .. '"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, failed, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
