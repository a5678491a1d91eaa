-- wrk script for loadtest/harness.py.
--
-- Always: done() prints one machine-readable line with p99.9 (wrk --latency stops at p99):
--   SGRESULT requests=N duration_us=N p50=US p75=US p90=US p95=US p99=US p999=US p9999=US connect=N ...
--   (the percentiles feed the report and the chart's latency plot)
-- With SG_HEADER_FILE set: every request carries header SG_HEADER_NAME (default Authorization)
-- with value SG_HEADER_PREFIX .. <next line of the file>, rotating through the lines
-- (S2: 1000 distinct bearer tokens; S3: session cookies), besides the -H headers. S7's DPoP
-- proofs are single use: SG_HEADER_OFFSET skips the lines earlier runs sent, SG_HEADER_ONCE=1
-- never wraps (past the end every request repeats the last line, which the gateway refuses, so
-- the harness sees errors), and with SG_THREADS > 1 thread k takes every SG_THREADS-th line.
-- Without SG_HEADER_FILE no request() is defined, so wrk keeps its prebuilt request and the
-- client costs stay as low as they go.

local file = os.getenv("SG_HEADER_FILE")

if file and file ~= "" then
  local name = os.getenv("SG_HEADER_NAME") or "Authorization"
  local prefix = os.getenv("SG_HEADER_PREFIX") or ""
  local offset = tonumber(os.getenv("SG_HEADER_OFFSET") or "0")
  local once = os.getenv("SG_HEADER_ONCE") == "1"
  local nthreads = tonumber(os.getenv("SG_THREADS") or "1")
  local requests = {}
  local threads = 0

  setup = function(thread)
    thread:set("sg_thread", threads)
    threads = threads + 1
  end

  init = function(_args)
    local me = sg_thread or 0
    local f = assert(io.open(file, "r"), "cannot open " .. file)
    local headers = {}
    for k, v in pairs(wrk.headers) do
      headers[k] = v
    end
    local n = 0
    for line in f:lines() do
      if line ~= "" then
        n = n + 1
        if n > offset and (n - offset - 1) % nthreads == me then
          headers[name] = prefix .. line
          -- Prebuilt per value: request() then only indexes, it never formats.
          requests[#requests + 1] = wrk.format(nil, nil, headers)
        end
      end
    end
    f:close()
    assert(#requests > 0, file .. " has no lines past " .. offset)
  end

  local i = 0
  request = function()
    if once then
      i = math.min(i + 1, #requests)
    else
      i = i % #requests + 1
    end
    return requests[i]
  end
end

done = function(summary, latency, _requests)
  local e = summary.errors
  io.write(string.format(
    "SGRESULT requests=%d duration_us=%d p50=%d p75=%d p90=%d p95=%d p99=%d p999=%d p9999=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(75), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9), latency:percentile(99.99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
