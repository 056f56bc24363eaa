-- wrk script for scripts/soak: a mixed Nx remote cache workload against /v1/cache/{hash}.
--
--   ~70% GET of a seeded hash       (a hit:  expect 200 and the exact seeded bytes)
--   ~20% GET of a never-stored hash (a miss: expect 404)
--   ~10% PUT of a new, unique hash  (a store: expect 200), 64 KiB body by default
--
-- Configuration comes from the environment (set by scripts/soak):
--   SOAK_TOKEN       read-write org token (required)
--   SOAK_SEEDS       number of seeded entries, hashes SEED_BASE+1 .. SEED_BASE+SOAK_SEEDS
--   SOAK_BODY_BYTES  size of seeded and stored bodies
--
-- Hashes are decimal digits only (the server accepts [A-Za-z0-9]{1,128}); the three kinds never
-- overlap: seeded hashes are 7 digits starting with 1, misses "2"+thread(3)+counter(12),
-- stores "3"+thread(3)+counter(12), so a PUT hash is unique across threads and connections.
--
-- wrk does not say which request a response answers (connections interleave), so every request
-- carries an id in X-Azure-Functions-InvocationId, which the handler echoes as X-Request-Id:
-- "<kind>-<hash>". response() checks each answer against what its request expected. A response
-- without the echo is classified from its content and counted as "uncorrelated".
--
-- Each thread keeps its own counters; done() (in wrk's main Lua state) collects them through
-- thread:get() and prints machine-readable "SOAK key value" lines for scripts/soak.

local SEED_BASE = 1000000
local INVOCATION_ID = "X-Azure-Functions-InvocationId"

-- Seeded and stored bodies: a first line naming the entry, padded with "x" to the size.
-- scripts/soak builds the seeded files the same way.
function entry_body(kind, hash, size)
   local head = "nx-soak " .. kind .. " " .. hash .. "\n"
   return head .. string.rep("x", size - #head)
end

-- ---------------------------------------------------------------- main state: setup / done
local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

local function add_into(total, t)
   for k, v in pairs(t or {}) do
      total[k] = (total[k] or 0) + v
   end
end

function done(summary, latency, requests)
   local issued, ok, unexpected, detail = {}, {}, {}, {}
   local uncorrelated = 0
   for _, thread in ipairs(threads) do
      add_into(issued, thread:get("issued"))
      add_into(ok, thread:get("ok"))
      add_into(unexpected, thread:get("unexpected"))
      add_into(detail, thread:get("detail"))
      uncorrelated = uncorrelated + (thread:get("uncorrelated") or 0)
   end
   local function out(key, value)
      io.write(string.format("SOAK %s %s\n", key, tostring(value)))
   end
   out("threads", #threads)
   out("duration_us", summary.duration)
   out("requests", summary.requests)
   out("bytes", summary.bytes)
   out("err_connect", summary.errors.connect)
   out("err_read", summary.errors.read)
   out("err_write", summary.errors.write)
   out("err_timeout", summary.errors.timeout)
   out("err_status_wrk", summary.errors.status)
   out("lat_p50_us", latency:percentile(50))
   out("lat_p90_us", latency:percentile(90))
   out("lat_p99_us", latency:percentile(99))
   out("lat_p999_us", latency:percentile(99.9))
   out("lat_max_us", latency.max)
   out("lat_mean_us", string.format("%.1f", latency.mean))
   for _, kind in ipairs({ "hit", "miss", "store" }) do
      out("issued_" .. kind, issued[kind] or 0)
      out("ok_" .. kind, ok[kind] or 0)
      out("unexpected_" .. kind, unexpected[kind] or 0)
   end
   out("uncorrelated", uncorrelated)
   -- Each distinct unexpected answer, e.g. "hit:500" or "hit:body-mismatch".
   local keys = {}
   for k in pairs(detail) do table.insert(keys, k) end
   table.sort(keys)
   for _, k in ipairs(keys) do
      out("detail", k .. "=" .. detail[k])
   end
end

-- ---------------------------------------------------------------- thread state
-- Globals (not locals) so that done() can read them with thread:get().
issued = { hit = 0, miss = 0, store = 0 }
ok = { hit = 0, miss = 0, store = 0 }
unexpected = { hit = 0, miss = 0, store = 0 }
detail = {}
uncorrelated = 0

local seeds, body_bytes, counter = 0, 0, 0
local seed_bodies = {}

function init(args)
   local token = os.getenv("SOAK_TOKEN")
   if not token or token == "" then
      error("SOAK_TOKEN is not set")
   end
   seeds = tonumber(os.getenv("SOAK_SEEDS") or "200")
   body_bytes = tonumber(os.getenv("SOAK_BODY_BYTES") or "65536")
   wrk.headers["Authorization"] = "Bearer " .. token
   math.randomseed(os.time() * 1000 + (id or 0))
   for i = 1, seeds do
      local hash = tostring(SEED_BASE + i)
      seed_bodies[hash] = entry_body("seed", hash, body_bytes)
   end
end

local function headers_for(request_id)
   local h = {}
   for k, v in pairs(wrk.headers) do h[k] = v end
   h[INVOCATION_ID] = request_id
   return h
end

function request()
   counter = counter + 1
   local r = math.random(100)
   if r <= 70 then
      local hash = tostring(SEED_BASE + math.random(seeds))
      issued.hit = issued.hit + 1
      return wrk.format("GET", "/v1/cache/" .. hash, headers_for("hit-" .. hash), nil)
   elseif r <= 90 then
      local hash = string.format("2%03d%012d", id, counter)
      issued.miss = issued.miss + 1
      return wrk.format("GET", "/v1/cache/" .. hash, headers_for("miss-" .. hash), nil)
   else
      local hash = string.format("3%03d%012d", id, counter)
      issued.store = issued.store + 1
      return wrk.format("PUT", "/v1/cache/" .. hash, headers_for("store-" .. hash),
         entry_body("store", hash, body_bytes))
   end
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

local function bad(kind, what)
   unexpected[kind] = (unexpected[kind] or 0) + 1
   local key = kind .. ":" .. what
   detail[key] = (detail[key] or 0) + 1
end

function response(status, headers, body)
   local kind, hash
   local echoed = header(headers, "X-Request-Id")
   if echoed then
      kind, hash = echoed:match("^(%a+)%-(%d+)$")
   end
   if not kind then
      -- No usable echo: infer the kind from the answer itself.
      uncorrelated = uncorrelated + 1
      if status == 404 then
         kind = "miss"
      elseif status == 200 and body == "stored" then
         kind = "store"
      elseif status == 200 then
         kind = "hit"
         hash = body:match("^nx%-soak seed (%d+)\n")
      else
         bad("unknown", tostring(status))
         return
      end
   end
   if kind == "hit" then
      if status ~= 200 then
         bad(kind, tostring(status))
      elseif not hash or body ~= seed_bodies[hash] then
         bad(kind, "body-mismatch")
      else
         ok.hit = ok.hit + 1
      end
   elseif kind == "miss" then
      if status ~= 404 then
         bad(kind, tostring(status))
      else
         ok.miss = ok.miss + 1
      end
   elseif kind == "store" then
      if status ~= 200 then
         bad(kind, tostring(status))
      else
         ok.store = ok.store + 1
      end
   else
      bad("unknown", tostring(status))
   end
end
