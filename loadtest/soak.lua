-- wrk script for loadtest/soak.py: mixed S0-S4 traffic against one gateway.
--
-- Env: SG_SOAK_JWT (S1 token), SG_SOAK_JWTS (file, S2 tokens), SG_SOAK_COOKIES (file, S3 cookies),
-- SG_SOAK_OPAQUE (S4 token), SG_SOAK_DELAY_MS (pause before each request on a connection, so a
-- soak on a shared machine leaves CPU to others). Requests go round-robin over
-- /s0 (no plugin), /s1 (one JWT), /s2 (1000 JWTs), /s3 (1000 session cookies), /s4 (opaque token).
-- Every response that is not a 2xx is counted (wrk itself counts only >= 400), and done() prints:
--   SGSOAK requests=N non2xx=N connect=N read=N write=N status=N timeout=N p99=US

local function lines(path)
  local out = {}
  local f = assert(io.open(path, "r"), "cannot open " .. path)
  for line in f:lines() do
    if line ~= "" then out[#out + 1] = line end
  end
  f:close()
  assert(#out > 0, path .. " has no lines")
  return out
end

local requests = {}
local delay_ms = tonumber(os.getenv("SG_SOAK_DELAY_MS") or "0") or 0
local threads = {}

setup = function(thread)
  threads[#threads + 1] = thread
end

init = function(_args)
  local jwt = os.getenv("SG_SOAK_JWT")
  local opaque = os.getenv("SG_SOAK_OPAQUE")
  local jwts = lines(os.getenv("SG_SOAK_JWTS"))
  local cookies = lines(os.getenv("SG_SOAK_COOKIES"))
  local n = math.max(#jwts, #cookies)
  for i = 1, n do
    requests[#requests + 1] = wrk.format("GET", "/s0/" .. i, {})
    requests[#requests + 1] = wrk.format("GET", "/s1/" .. i, { Authorization = "Bearer " .. jwt })
    requests[#requests + 1] = wrk.format("GET", "/s2/" .. i, { Authorization = "Bearer " .. jwts[(i - 1) % #jwts + 1] })
    requests[#requests + 1] = wrk.format("GET", "/s3/" .. i, { Cookie = cookies[(i - 1) % #cookies + 1] })
    requests[#requests + 1] = wrk.format("GET", "/s4/" .. i, { Authorization = "Bearer " .. opaque })
  end
  non2xx = 0
end

local i = 0
request = function()
  i = i % #requests + 1
  return requests[i]
end

if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end

response = function(status, _headers, _body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

done = function(summary, latency, _requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
  end
  local e = summary.errors
  io.write(string.format("SGSOAK requests=%d non2xx=%d connect=%d read=%d write=%d status=%d timeout=%d p99=%d\n",
    summary.requests, bad, e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(99)))
end
