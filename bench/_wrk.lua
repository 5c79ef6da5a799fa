-- wrk script of bench/serve.py: POST prebuilt multipart bodies (one 512 px PNG each), cycling through them.
--
--   wrk -t1 -cN -dSs -s bench/_wrk.lua URL -- BODY_DIR COUNT CONTENT_TYPE
--
-- BODY_DIR holds 0.bin .. COUNT-1.bin; every request is formatted once per thread in init(), so wrk only
-- copies bytes while measuring. No response() hook: defining one makes wrk hand every answer to Lua.
-- done() prints one line for the bench to parse (microseconds; status errors = answers >= 400).

local prepared = {}
local count = 0
local next_index = 0

function init(args)
   local dir, content_type = args[1], args[3]
   count = tonumber(args[2])
   for k = 0, count - 1 do
      local file = assert(io.open(dir .. "/" .. k .. ".bin", "rb"))
      local body = file:read("*a")
      file:close()
      prepared[k + 1] = wrk.format("POST", nil, { ["Content-Type"] = content_type }, body)
   end
end

function request()
   next_index = next_index % count + 1
   return prepared[next_index]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "wrk-result requests=%d duration_us=%.0f p50_us=%.0f p99_us=%.0f status_errors=%d socket_errors=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.status, e.connect + e.read + e.write + e.timeout))
end
