"""The Lua scripts of RedisStore: each runs atomically inside Redis, so replicas never interleave
on a thread's bindings, a user's start counter, a lease or a sweep.

A thread's bindings are one string key holding a JSON array, newest first, of bindings encoded as
arrays of six strings: handler, started_by, conversation, last_activity, ttl ("" = the store's
default) and awaiting. Times travel as Python's repr of the float, so Lua never reformats them
(its tostring keeps 14 digits) and they come back exact; numbers handed to redis.call are
written by Redis with full precision. A binding is live while last_activity + ttl > now, `now`
being the store's clock passed in by the caller: exact whatever Redis's own key expiry does.
Every key written gets an expiry (PX, relative, so an injected test clock works too).
"""

from __future__ import annotations

from .memory import QUIET_TTL

QUIET_MS = int(QUIET_TTL * 1000)
# Expired conversations wait in the deadlines set for a sweep this long after their end at most.
DEADLINES_KEEP_MS = QUIET_MS

_COMMON = """
local QUIET_MS = {quiet_ms}
local KEEP_MS = {keep_ms}
local PRUNE_EVERY = 64
local function expiry(b, default)
  if b[5] == '' then return tonumber(b[4]) + default end
  return tonumber(b[4]) + tonumber(b[5])
end
local function ms(seconds)
  local v = math.ceil(seconds * 1000)
  if v < 1 then return 1 end
  return v
end
-- the live bindings of a thread, newest first (the dead ones wait in the deadlines set)
local function live(key, now, default)
  local raw = redis.call('GET', key)
  local out = {}
  if raw then
    for _, b in ipairs(cjson.decode(raw)) do
      if expiry(b, default) > now then out[#out + 1] = b end
    end
  end
  return out
end
-- a binding's member in the deadlines set: the thread and the binding, one JSON array
local function member(thread, b)
  return cjson.encode({thread, b[1], b[2], b[3], b[4], b[5], b[6]})
end
-- raise a key's expiry to `want` ms from now, never lower it
local function keep(key, want)
  if redis.call('PTTL', key) < want then redis.call('PEXPIRE', key, want) end
end
-- the thread's stack, kept a day past its last expiry: a dead stack is the thread's "expired" cue
local function save(key, stack, now, default)
  if #stack == 0 then
    redis.call('DEL', key)
    return
  end
  local last = 0
  for _, b in ipairs(stack) do last = math.max(last, expiry(b, default)) end
  redis.call('SET', key, cjson.encode(stack), 'PX', ms(last - now) + QUIET_MS)
end
local function deadline(deadlines, thread, b, now, default)
  local e = expiry(b, default)
  redis.call('ZADD', deadlines, e, member(thread, b))
  keep(deadlines, ms(e - now) + KEEP_MS)
end
-- the user's index without the threads where the user has no live conversation any more;
-- returns thread, last_activity, ... of the others in order of activity
local function prune(index, user, threads, now, default)
  local out = {}
  for _, thread in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local found = nil
    for _, b in ipairs(live(threads .. thread, now, default)) do
      if b[2] == user then
        found = b
        break
      end
    end
    if found then
      out[#out + 1] = thread
      out[#out + 1] = found[4]
    else
      redis.call('ZREM', index, thread)
    end
  end
  return out
end
-- move the thread to the most recent end of a user's index (only if `xx` = already there)
local function opened(index, thread, b, now, default, xx)
  if xx and not redis.call('ZSCORE', index, thread) then return end
  local top = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  local seq = 1
  if top[2] then seq = tonumber(top[2]) + 1 end
  redis.call('ZADD', index, seq, thread)
  keep(index, ms(expiry(b, default) - now))
end
""".replace("{quiet_ms}", str(QUIET_MS)).replace("{keep_ms}", str(DEADLINES_KEEP_MS))

# KEYS: thread, deadlines, opened index of started_by, quiet mark
# ARGV: now, default ttl, thread id, the new binding (JSON), the thread key prefix.
# The user's index drops its ended threads every PRUNE_EVERY entries (opened_by drops them too).
BIND = _COMMON + """
local now, default, thread = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local new = cjson.decode(ARGV[4])
local stack = {}
local fresh = expiry(new, default) > now
if fresh then stack[1] = new end
for _, b in ipairs(live(KEYS[1], now, default)) do
  if b[1] == new[1] then redis.call('ZREM', KEYS[2], member(thread, b)) else stack[#stack + 1] = b end
end
save(KEYS[1], stack, now, default)
redis.call('DEL', KEYS[4])
if fresh then
  deadline(KEYS[2], thread, new, now, default)
  opened(KEYS[3], thread, new, now, default, false)
  if redis.call('ZCARD', KEYS[3]) % PRUNE_EVERY == 0 then prune(KEYS[3], new[2], ARGV[5], now, default) end
end
return 1
"""

# KEYS: thread, deadlines. ARGV: now (repr), default ttl, thread id, "1" for any handler, handler,
# the opened-index key prefix. Returns the touched binding (JSON) or false.
TOUCH = _COMMON + """
local now, default, thread = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local stack, old = {}, nil
for _, b in ipairs(live(KEYS[1], now, default)) do
  if old == nil and (ARGV[4] == '1' or b[1] == ARGV[5]) then old = b else stack[#stack + 1] = b end
end
if old == nil then return false end
local new = {old[1], old[2], old[3], ARGV[1], old[5], ''}
table.insert(stack, 1, new)
redis.call('ZREM', KEYS[2], member(thread, old))
save(KEYS[1], stack, now, default)
deadline(KEYS[2], thread, new, now, default)
opened(ARGV[6] .. old[2], thread, new, now, default, true)
return cjson.encode(new)
"""

# KEYS: thread, deadlines, quiet mark. ARGV: now, default ttl, thread id, "1" for all, handler,
# the "ended" mark. Returns 1 if a live conversation was ended.
UNBIND = _COMMON + """
local now, default, thread = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local before = live(KEYS[1], now, default)
local rest = {}
for _, b in ipairs(before) do
  if ARGV[4] == '1' or b[1] == ARGV[5] then redis.call('ZREM', KEYS[2], member(thread, b)) else rest[#rest + 1] = b end
end
if #rest == #before then return 0 end
save(KEYS[1], rest, now, default)
if #rest == 0 then redis.call('SET', KEYS[3], ARGV[6], 'PX', QUIET_MS) end
return 1
"""

# KEYS: thread, quiet mark. ARGV: now, default ttl. Why the thread's last conversation is over, once.
TAKE_QUIET = _COMMON + """
local now, default = tonumber(ARGV[1]), tonumber(ARGV[2])
local raw = redis.call('GET', KEYS[1])
if raw then
  local last = 0
  for _, b in ipairs(cjson.decode(raw)) do
    local e = expiry(b, default)
    if e > now then return false end
    last = math.max(last, e)
  end
  redis.call('DEL', KEYS[1])
  if last + QUIET_MS / 1000 > now then return 'expired' end
  return false
end
local mark = redis.call('GET', KEYS[2])
if not mark then return false end
redis.call('DEL', KEYS[2])
local sep = string.find(mark, '|', 1, true)
if tonumber(string.sub(mark, sep + 1)) > now then return string.sub(mark, 1, sep - 1) end
return false
"""

# KEYS: a user's opened index. ARGV: now, default ttl, user id, the thread key prefix.
# Returns thread, last_activity, ... of the user's live conversations in order of activity,
# and forgets the threads where the user has none any more.
OPENED_BY = _COMMON + """
return prune(KEYS[1], ARGV[3], ARGV[4], tonumber(ARGV[1]), tonumber(ARGV[2]))
"""

# KEYS: deadlines. ARGV: now, batch size. The due members, each taken by exactly one caller.
SWEEP = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""

# KEYS: the user's starts. ARGV: at, window, limit, "(" .. at - window, a unique member, expiry ms.
# MemoryStore.count_start's sliding window: drop what no post can count any more, count, record.
COUNT_START = """
local at, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local newest = at
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) > newest then newest = tonumber(top[2]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', newest - window)
if redis.call('ZCOUNT', KEYS[1], ARGV[4], ARGV[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""

# KEYS: the thread's lease. ARGV: holder, ms. Taken if free, extended if this holder's already.
ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: the thread's lease. ARGV: holder, ms. Extended only while this holder's.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: the thread's lease. ARGV: holder. Deleted only if this holder's.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: the set of replicas with tracked turns, this replica's tracked turns. ARGV: this replica,
# the key prefix, expiry ms. Moves the tracked turns of every replica whose heartbeat key is gone
# to this one's, each to one adopter only; returns their frames.
ADOPT = """
local frames = {}
for _, other in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if other ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. 'h:' .. other) == 0 then
    local theirs = ARGV[2] .. 'u:' .. other
    local turns = redis.call('HGETALL', theirs)
    for i = 1, #turns, 2 do
      redis.call('HSET', KEYS[2], turns[i], turns[i + 1])
      frames[#frames + 1] = turns[i + 1]
    end
    redis.call('DEL', theirs)
    redis.call('SREM', KEYS[1], other)
  end
end
if #frames > 0 then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return frames
"""
