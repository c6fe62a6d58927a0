"""The Lua scripts the nodes run in Redis: each is one atomic step, judged on Redis's clock.

Every key lives under ``sealroom:``. The bus is one stream, ``sealroom:bus``: its order is
the cluster's order. Entries are flat field lists (``k`` names the kind), so no script needs a
JSON library and a reader can check every field it takes.

* ``sealroom:ids`` -- the message id counter; one ``INCR`` per message, in the same step that
  appends the message to the bus, so ids increase in bus order, in every room.
* ``sealroom:presence`` -- ``ROOM<TAB>NAME`` -> sessions in that room, across the cluster;
  ``sealroom:online`` -- ``NAME`` -> logged-in sessions. Each node keeps its own share in
  ``sealroom:node:ID:presence`` and ``…:online``, so that a dead node's share can be taken
  back (reaped) in one step, once.
* ``sealroom:nodes`` -- a sorted set of node incarnations scored by their last heartbeat, in
  Redis's milliseconds; ``sealroom:node:ID:info`` -- name, sessions, started.
"""

from __future__ import annotations

PREFIX = "sealroom:"
BUS = PREFIX + "bus"
NODES = PREFIX + "nodes"

_COMMON = """
local P = 'sealroom:'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function add(maxlen, ...)
  return redis.call('XADD', P .. 'bus', 'MAXLEN', '~', maxlen, '*', ...)
end
local function count(key, field, delta)
  local n = redis.call('HINCRBY', key, field, delta)
  if n <= 0 then redis.call('HDEL', key, field); n = 0 end
  return n
end
"""

# ARGV: node, maxlen, then operations: KIND SEQ ARGS… (the number of ARGS depends on KIND).
# Returns one result per operation. A node no longer in sealroom:nodes was declared dead by
# the others, who took back its presence: it must not publish (FENCED), but start anew.
PUBLISH = (
    _COMMON
    + """
local node, maxlen = ARGV[1], ARGV[2]
if not redis.call('ZSCORE', P .. 'nodes', node) then
  return redis.error_reply('FENCED this node was declared dead')
end
local mine_p, mine_o = P .. 'node:' .. node .. ':presence', P .. 'node:' .. node .. ':online'
local function presence(kind, seq, room, name, ser, quiet)
  local field = room .. '\\t' .. name
  local delta = 1
  if kind == 'part' then delta = -1 end
  local before = tonumber(redis.call('HGET', mine_p, field) or '0')
  if delta < 0 and before <= 0 then
    return -1  -- never counted here (taken back already): nothing to say
  end
  count(mine_p, field, delta)
  local total = count(P .. 'presence', field, delta)
  add(maxlen, 'k', kind, 'room', room, 'name', name, 'total', total, 'quiet', quiet,
      'node', node, 'seq', seq, 'ser', ser)
  return total
end
local results = {}
local i = 3
while i <= #ARGV do
  local kind, seq = ARGV[i], ARGV[i + 1]
  i = i + 2
  if kind == 'say' then
    local room, from, text, ser = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    i = i + 4
    local id = redis.call('INCR', P .. 'ids')
    add(maxlen, 'k', 'say', 'id', id, 'room', room, 'from', from, 'text', text,
        'node', node, 'seq', seq, 'ser', ser)
    results[#results + 1] = id
  elseif kind == 'id' then
    results[#results + 1] = redis.call('INCR', P .. 'ids')
  elseif kind == 'dm' then
    local to, from, text, stamp, id = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    i = i + 5
    local online = tonumber(redis.call('HGET', P .. 'online', to) or '0')
    if online > 0 then
      add(maxlen, 'k', 'dm', 'id', id, 'to', to, 'from', from, 'text', text, 'stamp', stamp,
          'node', node, 'seq', seq)
    end
    results[#results + 1] = online
  elseif kind == 'join' or kind == 'part' then
    local room, name, ser, quiet = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    i = i + 4
    results[#results + 1] = presence(kind, seq, room, name, ser, quiet)
  elseif kind == 'enter' then
    -- A login and its default room in one step: counted online unless its user would have
    -- more than LIMIT sessions (-2: not counted, nothing said); then joined to ROOM ('' for
    -- none: 0), as a 'join' of this seq.
    local name, limit, room, ser = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
    i = i + 4
    if tonumber(redis.call('HGET', P .. 'online', name) or '0') >= limit then
      results[#results + 1] = -2
    else
      count(mine_o, name, 1)
      count(P .. 'online', name, 1)
      if room == '' then
        results[#results + 1] = 0
      else
        results[#results + 1] = presence('join', seq, room, name, ser, '0')
      end
    end
  elseif kind == 'logout' then
    local name = ARGV[i]
    i = i + 1
    if tonumber(redis.call('HGET', mine_o, name) or '0') <= 0 then
      results[#results + 1] = -1  -- never counted here (refused, or taken back already)
    else
      count(mine_o, name, -1)
      results[#results + 1] = count(P .. 'online', name, -1)
    end
  else
    local payload = ARGV[i]
    i = i + 1
    add(maxlen, 'k', kind, 'p', payload, 'node', node, 'seq', seq)
    results[#results + 1] = 0
  end
end
return results
"""
)

# Take back the share of every node unheard for ARGV[1] ms (or of the node ARGV[3] when
# given: a node leaving in order): PART where a user's last session in a room was there.
# ARGV: timeout_ms, maxlen, [node]. Returns the nodes taken back. One step: never twice.
REAP = (
    _COMMON
    + """
local timeout, maxlen, only = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local dead
if only then
  dead = {only}
else
  dead = redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', now_ms() - timeout)
end
local taken = {}
for _, d in ipairs(dead) do
  local base = P .. 'node:' .. d
  local share = redis.call('HGETALL', base .. ':presence')
  for j = 1, #share, 2 do
    local field, n = share[j], tonumber(share[j + 1])
    local total = count(P .. 'presence', field, -n)
    local tab = string.find(field, '\\t', 1, true)
    add(maxlen, 'k', 'part', 'room', string.sub(field, 1, tab - 1),
        'name', string.sub(field, tab + 1), 'total', total, 'quiet', '0',
        'node', d, 'seq', '0', 'ser', '0')
  end
  local online = redis.call('HGETALL', base .. ':online')
  for j = 1, #online, 2 do
    count(P .. 'online', online[j], -tonumber(online[j + 1]))
  end
  redis.call('DEL', base .. ':presence', base .. ':online', base .. ':info')
  redis.call('ZREM', P .. 'nodes', d)
  add(maxlen, 'k', 'gone', 'p', '', 'node', d, 'seq', '0')
  taken[#taken + 1] = d
end
return taken
"""
)

# ARGV: node, name, sessions. 0 when the node was declared dead (it must start anew), else
# Redis's time in ms.
HEARTBEAT = (
    _COMMON
    + """
if not redis.call('ZSCORE', P .. 'nodes', ARGV[1]) then return 0 end
local t = now_ms()
redis.call('ZADD', P .. 'nodes', t, ARGV[1])
redis.call('HSET', P .. 'node:' .. ARGV[1] .. ':info', 'name', ARGV[2], 'sessions', ARGV[3],
           'beat', t)
return t
"""
)

# ARGV: node, name, id floor. Joins the cluster; returns {last bus entry id, presence}, read
# in the same step, so that a reader starting after that id misses nothing and repeats
# nothing. The id counter is raised to the floor (the store's ids, after `db copy`).
REGISTER = (
    _COMMON
    + """
local t = now_ms()
redis.call('ZADD', P .. 'nodes', t, ARGV[1])
redis.call('HSET', P .. 'node:' .. ARGV[1] .. ':info', 'name', ARGV[2], 'sessions', 0,
           'beat', t, 'started', t)
local ids = tonumber(redis.call('GET', P .. 'ids') or '0')
if ids < tonumber(ARGV[3]) then redis.call('SET', P .. 'ids', ARGV[3]) end
local last = redis.call('XREVRANGE', P .. 'bus', '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {id, redis.call('HGETALL', P .. 'presence')}
"""
)

# A token bucket shared by every node. ARGV: key, rate per second, burst. Returns the
# seconds to wait as a string (0 when a token was taken); numbers would be truncated.
BUCKET = """
local key = 'sealroom:bucket:' .. ARGV[1]
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', key, 'tokens', 'at')
local tokens, at = tonumber(held[1]) or burst, tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', key, 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""
