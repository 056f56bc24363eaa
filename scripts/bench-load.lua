-- wrk script for scripts/bench-load: one workload (GET or PUT) against one cache server, with
-- our own per-status counters (wrk's "Non-2xx" lumps 307 and 404 together with real errors).
--
-- Configuration from the environment (set by scripts/bench-load):
--   BENCH_MODE        get | put | root (`GET /` without a token: the reference of workload 3;
--                     its answer must be 200 "ok")
--   BENCH_TOKEN       bearer token
--   BENCH_PREFIX      path before the hash: /v1/cache/ (handler) or /v8/artifacts/ (peer)
--   BENCH_QUERY       appended after the hash: "" (handler) or "?teamId=bench" (peer)
--   BENCH_EXPECT      the one expected status: 200, 307 or 404
--   BENCH_BYTES       GET: expected body size for 200 (0: do not check); PUT: body size
--   BENCH_HASH_BASE   GET: hashes BENCH_HASH_BASE+1 .. BENCH_HASH_BASE+BENCH_HASH_COUNT
--   BENCH_HASH_COUNT
--   BENCH_RUN         PUT: a decimal run id; hashes are RUN .. thread(2) .. counter(10), unique
--                     across threads, connections and runs
--   BENCH_LOCATION    GET 307: a substring the Location header must contain (e.g. "/nx-cache/org/")
--   BENCH_NO_RESPONSE 1: do not define response() (wrk then neither buffers bodies nor parses
--                     headers); statuses are then checked from wrk's own counters and the byte
--                     total by scripts/bench-load (used for the largest downloads only)
--   BENCH_TURBO       1: the requests turbo makes (workload 6): its User-Agent and Accept on
--                     every request, and on a PUT its x-artifact-duration and x-artifact-sha
--   BENCH_TAG         with BENCH_TURBO, a PUT also carries this x-artifact-tag (signature mode)
--   BENCH_HASH_WIDTH  16: hashes are 16 digits, as turbo's are 16 characters: a GET's is its
--                     number zero-padded, a PUT's RUN(4) .. thread(2) .. counter(10)
--
-- GET bodies are compared with the seeded body in full: "nx-bench HASH\n" padded with "x". In
-- LuaJIT strings are interned, so the comparison is a pointer compare after wrk pushed the body.

local mode = os.getenv("BENCH_MODE") or "get"
local token = os.getenv("BENCH_TOKEN") or error("BENCH_TOKEN is not set")
local prefix = os.getenv("BENCH_PREFIX") or "/v1/cache/"
local query = os.getenv("BENCH_QUERY") or ""
local expect = tonumber(os.getenv("BENCH_EXPECT") or "200")
local bytes = tonumber(os.getenv("BENCH_BYTES") or "0")
local hash_base = tonumber(os.getenv("BENCH_HASH_BASE") or "1000000")
local hash_count = tonumber(os.getenv("BENCH_HASH_COUNT") or "1")
local run = os.getenv("BENCH_RUN") or "9"
local location_part = os.getenv("BENCH_LOCATION") or ""
local no_response = os.getenv("BENCH_NO_RESPONSE") == "1"
local turbo = os.getenv("BENCH_TURBO") == "1"
local tag = os.getenv("BENCH_TAG") or ""
local width = tonumber(os.getenv("BENCH_HASH_WIDTH") or "0")
-- What turbo 2.11 sends (shared/docs/turbo-client-contract.md).
local TURBO_AGENT = "User-Agent: turbo 2.11.13 1.98.0-nightly linux x86_64\r\nAccept: */*\r\n"
local TURBO_SHA = "5a4da53a169cb32458e42e7c65f20e4664bc7cfa"

-- A GET's hash: its number, zero-padded to BENCH_HASH_WIDTH digits.
local function get_hash(n)
   if width > 0 then return string.format("%0" .. width .. "d", n) end
   return tostring(n)
end

-- The body scripts/bench-load seeds (and PUTs): a first line naming it, padded with "x".
function bench_body(hash, size)
   local head = "nx-bench " .. hash .. "\n"
   return head .. string.rep("x", size - #head)
end

-- ---------------------------------------------------------------- main state
local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

function done(summary, latency, requests)
   local statuses, bad = {}, {}
   for _, thread in ipairs(threads) do
      for k, v in pairs(thread:get("statuses") or {}) do statuses[k] = (statuses[k] or 0) + v end
      for k, v in pairs(thread:get("bad") or {}) do bad[k] = (bad[k] or 0) + v end
   end
   local function out(key, value) io.write(string.format("BENCH %s %s\n", key, tostring(value))) end
   out("requests", summary.requests)
   out("duration_us", summary.duration)
   out("bytes", summary.bytes)
   out("err_connect", summary.errors.connect)
   out("err_read", summary.errors.read)
   out("err_write", summary.errors.write)
   out("err_timeout", summary.errors.timeout)
   out("err_status", summary.errors.status)
   out("p50_us", latency:percentile(50))
   out("p90_us", latency:percentile(90))
   out("p99_us", latency:percentile(99))
   out("max_us", latency.max)
   out("mean_us", string.format("%.1f", latency.mean))
   out("counted", no_response and 0 or 1)
   for k, v in pairs(statuses) do out("status", k .. "=" .. v) end
   for k, v in pairs(bad) do out("bad", k .. "=" .. v) end
end

-- ---------------------------------------------------------------- thread state
statuses = {}
bad = {}

local host, counter = "", 0
local get_requests, expected_bodies = {}, {}
local put_head, put_mid, put_body = "", "", ""

function init(args)
   host = wrk.headers["Host"]
   math.randomseed(os.time() * 1000 + (id or 0))
   local common = "Host: " .. host .. "\r\nAuthorization: Bearer " .. token .. "\r\n"
   if turbo then common = common .. TURBO_AGENT end
   if mode == "root" then
      hash_count = 1
      get_requests[1] = "GET / HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n"
   elseif mode == "get" then
      -- Every request prebuilt: request() only picks one.
      for i = 1, hash_count do
         local hash = get_hash(hash_base + i)
         get_requests[i] = "GET " .. prefix .. hash .. query .. " HTTP/1.1\r\n" .. common .. "\r\n"
         if expect == 200 and bytes > 0 then
            expected_bodies[hash] = bench_body(hash, bytes)
         end
      end
   else
      -- The body is built once; each request is head .. hash .. mid .. body (one concatenation).
      put_head = "PUT " .. prefix
      local extra = ""
      if turbo then
         extra = "x-artifact-duration: 1234\r\nx-artifact-sha: " .. TURBO_SHA .. "\r\n"
         if tag ~= "" then extra = extra .. "x-artifact-tag: " .. tag .. "\r\n" end
      end
      put_mid = query .. " HTTP/1.1\r\n" .. common .. extra
         .. "Content-Type: application/octet-stream\r\nContent-Length: " .. bytes .. "\r\n\r\n"
      put_body = bench_body("put", bytes)
   end
end

function request()
   if mode == "get" or mode == "root" then
      return get_requests[math.random(hash_count)]
   end
   counter = counter + 1
   local hash
   if width == 16 then
      hash = string.format("%04d%02d%010d", tonumber(run), id or 0, counter)
   else
      hash = string.format("%s%02d%010d", run, id or 0, counter)
   end
   return put_head .. hash .. put_mid .. put_body
end

local function header(headers, name)
   local v = headers[name]
   if v then return v end
   name = name:lower()
   for k, value in pairs(headers) do
      if k:lower() == name then return value end
   end
   return nil
end

local function check(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
   if status ~= expect then
      return
   end
   if mode == "root" then
      if body ~= "ok" then
         bad["root-body"] = (bad["root-body"] or 0) + 1
      end
   elseif mode == "get" and status == 200 and bytes > 0 then
      if #body ~= bytes then
         bad["short-body"] = (bad["short-body"] or 0) + 1
      else
         local hash = body:match("^nx%-bench (%d+)\n")
         if not hash or body ~= expected_bodies[hash] then
            bad["body-mismatch"] = (bad["body-mismatch"] or 0) + 1
         end
      end
   elseif status == 307 then
      local location = header(headers, "Location")
      if not location or (location_part ~= "" and not location:find(location_part, 1, true)) then
         bad["bad-location"] = (bad["bad-location"] or 0) + 1
      end
   end
end

if not no_response then
   response = check
end
