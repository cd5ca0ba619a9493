-- wrk script for the bench: POST one fixed body, then print a machine-readable summary.
--
-- Set through the environment (wrk passes no arguments to scripts started with -s alone):
--   BENCH_BODY_FILE     file whose bytes are the request body (JSON)
--   BENCH_HEADERS       the headers, one "name: value" per line (content-type, x-api-key, ...)
--   BENCH_MAX_REQUESTS  optional: stop after this many responses (soak mode); counted per
--                       wrk thread, so run with -t1 for an exact total
-- done() prints one line starting with "BENCH_JSON " followed by a JSON object.

local function read_file(path)
  local file = assert(io.open(path, "rb"), "cannot open BENCH_BODY_FILE " .. tostring(path))
  local data = file:read("*a")
  file:close()
  return data
end

wrk.method = "POST"
wrk.body = read_file(os.getenv("BENCH_BODY_FILE"))
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^%s*([^:]+):%s*(.-)%s*$")
  if name then
    wrk.headers[name] = value
  end
end

local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "")
if max_requests then
  -- Defined only when needed: with a response() function wrk calls into Lua on every
  -- response, which costs the load generator CPU the timed runs should not pay.
  local seen = 0
  function response(status, headers, body)
    seen = seen + 1
    if seen == max_requests then
      -- stop() ends this thread's loop, but wrk's main thread sleeps out -d regardless:
      -- the marker tells the bench to end it now with SIGINT.
      wrk.thread:stop()
      io.write("BENCH_STOPPED\n")
      io.flush()
    end
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
