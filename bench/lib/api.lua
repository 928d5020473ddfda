-- wrk script for bench/api.sh.
--
--   wrk ... -s bench/lib/api.lua http://127.0.0.1:PORT -- MODE TOKEN ACCOUNT IDS_FILE PAGES
--
-- MODE is one of
--   status  GET /client/v4/status                                  (static ceiling)
--   get     GET /client/v4/accounts/ACCOUNT/cfd_tunnel/ID          (random seeded ID)
--   list    GET /client/v4/accounts/ACCOUNT/cfd_tunnel?per_page=100&page=P  (random P in 1..PAGES)
--
-- Every mode goes through the same code path on the client side (a request
-- picked at random from a table built once per thread, with the same
-- Authorization header), so the client's cost is the same in all three runs
-- and differences come from the server.

local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("thread_no", counter)
end

local requests = {}

local function add(path, token)
   requests[#requests + 1] = wrk.format("GET", path, {
      ["Authorization"] = "Bearer " .. token,
      ["Accept"] = "application/json",
   })
end

function init(args)
   local mode, token, account, ids_file, pages = args[1], args[2], args[3], args[4], tonumber(args[5])
   assert(mode and token and account, "usage: -- MODE TOKEN ACCOUNT IDS_FILE PAGES")
   local base = "/client/v4/accounts/" .. account .. "/cfd_tunnel"
   if mode == "status" then
      add("/client/v4/status", token)
   elseif mode == "get" then
      for id in io.lines(ids_file) do
         if id ~= "" then
            add(base .. "/" .. id, token)
         end
      end
   elseif mode == "list" then
      assert(pages and pages >= 1, "list mode needs PAGES >= 1")
      for p = 1, pages do
         add(base .. "?per_page=100&page=" .. p, token)
      end
   else
      error("unknown mode " .. tostring(mode))
   end
   assert(#requests > 0, "no requests built (empty ids file?)")
   math.randomseed(os.time() * 1000 + (thread_no or 0))
end

function request()
   return requests[math.random(#requests)]
end
