-- fly-replay for the edge proxy (providers/proxy).
--
-- Why Lua: HAProxy configuration alone cannot act on a response header by
-- re-sending the request elsewhere. This action runs only when a response
-- carries `fly-replay` (the backend's `http-response` rule checks the header
-- natively); the request's headers (binary) and body were kept with native `set-var`
-- (one variable, a second only when there is a body), so requests that are
-- not replayed cost no Lua at all. The path and query need no variable: a
-- frontend that replays logs, so HAProxy keeps each request line
-- (`capture.req.uri`, scheme and authority of an absolute URI left out, never
-- cut: `tune.http.logurilen` is the buffer size). Nor does the method: HAProxy
-- keeps it with the transaction for the five methods we replay.
--
-- Targets come from the replay map (`BE/any`, `BE/region/R`, `BE/instance/N`,
-- values `name|addr|port,...`), kept in step with the routing table through
-- the runtime API. A request whose body exceeds the cap (or was not held
-- whole) is refused with 413, never replayed truncated. When no target can
-- answer, the app's own response goes to the client with `fly-replay-failed`.

local targets = Map.new(os.getenv("FLEET_REPLAY_MAP"), Map._str)
local cap = tonumber(os.getenv("FLEET_REPLAY_CAP"))
local room = tonumber(os.getenv("FLEET_REPLAY_ROOM"))
local timeout_ms = tonumber(os.getenv("FLEET_REPLAY_TIMEOUT_MS"))

local methods = { GET = "get", HEAD = "head", PUT = "put", POST = "post", DELETE = "delete" }
local hop_by_hop = {
  ["connection"] = true, ["keep-alive"] = true, ["transfer-encoding"] = true,
  ["content-length"] = true, ["te"] = true, ["trailer"] = true, ["upgrade"] = true,
  ["proxy-connection"] = true, ["fly-replay-src"] = true,
}

local function directives(value)
  local out = {}
  for part in string.gmatch(value, "[^;,]+") do
    local k, v = string.match(part, "^%s*([%w_-]+)%s*=%s*(.-)%s*$")
    if k then out[string.lower(k)] = v end
  end
  return out
end

-- SPOE variable-length integer at `pos` of `s` (the encoding of req.hdrs_bin): value, next pos
local function varint(s, pos)
  local i = string.byte(s, pos)
  pos = pos + 1
  if i < 240 then return i, pos end
  local shift = 4
  repeat
    local b = string.byte(s, pos)
    pos = pos + 1
    i = i + (b << shift)
    shift = shift + 7
  until b < 128
  return i, pos
end

-- The request's headers from req.hdrs_bin (length-prefixed name and value
-- pairs, an empty pair last; cheaper for HAProxy to produce than req.hdrs
-- text: ~0.4k instructions less per request with a browser's dozen
-- headers): those a replay re-sends, the declared Content-Length, and the
-- size of the headers as text (what they took in the buffer, near enough).
local function request_headers(raw)
  local out, declared, size = {}, nil, 2
  local pos = 1
  while pos <= #raw do
    local nlen, vlen
    nlen, pos = varint(raw, pos)
    local name = string.lower(string.sub(raw, pos, pos + nlen - 1))
    pos = pos + nlen
    vlen, pos = varint(raw, pos)
    local value = string.sub(raw, pos, pos + vlen - 1)
    pos = pos + vlen
    if nlen == 0 then break end
    size = size + nlen + vlen + 4
    if name == "content-length" then declared = tonumber(value) end
    if not hop_by_hop[name] then
      out[name] = out[name] or {}
      table.insert(out[name], value)
    end
  end
  return out, declared, size
end

local function split_targets(value, skip)
  local out = {}
  for item in string.gmatch(value or "", "[^,]+") do
    local name, addr, port = string.match(item, "^([^|]+)|([^|]+)|(%d+)$")
    if name and name ~= skip then
      table.insert(out, { name = name, addr = addr, port = port })
    end
  end
  return out
end

local function url_of(target, path)
  local host = target.addr
  if string.find(host, ":", 1, true) then host = "[" .. host .. "]" end
  return "http://" .. host .. ":" .. target.port .. path
end

local function region_of(server)
  return string.match(server or "", "^(.*)%.%d+$") or ""
end

local function fail(txn, reason)
  txn.http:res_del_header("fly-replay")
  txn.http:res_add_header("fly-replay-failed", reason)
end

local function refuse(txn, status, reason)
  local body = "fly-replay refused: " .. reason .. "\n"
  txn:done(txn:reply({
    status = status,
    headers = {
      ["content-type"] = { "text/plain" },
      ["fly-replay-failed"] = { reason },
    },
    body = body,
  }))
end

local function candidates(txn, want, backend, source)
  if want["instance"] then
    local id = string.gsub(want["instance"], "^.*/", "")
    id = string.gsub(id, "#", ".")
    return split_targets(targets:lookup(backend .. "/instance/" .. id), nil)
  elseif want["region"] then
    return split_targets(targets:lookup(backend .. "/region/" .. want["region"]), source)
  elseif want["elsewhere"] == "true" then
    return split_targets(targets:lookup(backend .. "/any"), source)
  end
  return nil
end

core.register_action("fly_replay", { "http-res" }, function(txn)
  local header = txn.f:res_hdr("fly-replay") or ""
  local want = directives(header)
  -- a spilled request (providers/proxy/spill.py) replays with its route's targets
  local backend = string.gsub(txn.f:be_name(), "_spill$", "")
  local source = txn.f:srv_name()
  local list = candidates(txn, want, backend, source)
  if list == nil then
    return fail(txn, "unrecognised fly-replay: " .. header)
  end
  if #list == 0 then
    return fail(txn, "no target for " .. header)
  end
  local method = txn.f:method() or ""
  local call = methods[method]
  if call == nil then
    return fail(txn, "method " .. method .. " cannot be replayed")
  end
  local headers, declared, head_size = request_headers(txn:get_var("txn.rq_hdrs") or "")
  local body = txn:get_var("txn.rq_body")
  local blen = body and #body or 0
  -- without Content-Length (chunked) a body cut by the buffer looks whole: a body
  -- that nearly fills the buffer is refused rather than replayed maybe truncated
  local chunked = declared == nil and blen > 0
  if blen > cap or (declared or 0) > cap or blen < (declared or 0)
    or (chunked and head_size + blen + 1024 >= room) then
    return refuse(txn, 413, "request body over the replay limit of " .. cap .. " bytes")
  end
  local now = core.now()
  local src = "instance=" .. (source or "") .. ";region=" .. region_of(source)
    .. ";t=" .. string.format("%d%06d", now.sec, now.usec)
  if want["state"] then src = src .. ";state=" .. want["state"] end
  headers["fly-replay-src"] = { src }
  if txn.f:capture_req_method() == nil then
    return fail(txn, "request line not kept (the frontend does not log)")
  end
  local path = txn.f:capture_req_uri() or "/" -- nil: an absolute URI without a path
  local last = "unreachable"
  for _, target in ipairs(list) do
    local client = core.httpclient()
    local ok, res = pcall(client[call], client, {
      url = url_of(target, path), headers = headers, body = body, timeout = timeout_ms,
    })
    if ok and res and res.status and res.status > 0 then
      local out = {}
      for name, values in pairs(res.headers or {}) do
        local lname = string.lower(name)
        if not hop_by_hop[lname] and lname ~= "fly-replay" then
          out[lname] = {}
          for _, v in pairs(values) do table.insert(out[lname], v) end
        end
      end
      if res.headers and res.headers["fly-replay"] then
        out["fly-replay-failed"] = { "replayed request asked for another replay" }
      end
      local rbody = res.body or ""
      if #rbody + 4096 >= room then
        return refuse(txn, 502, "replayed response over the proxy buffer")
      end
      return txn:done(txn:reply({ status = res.status, headers = out, body = rbody }))
    end
    last = target.name .. " unreachable"
  end
  return fail(txn, last)
end)
