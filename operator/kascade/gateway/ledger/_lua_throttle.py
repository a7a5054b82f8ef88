"""Lua scripts of the Redis throttle (sliding log), mirroring ``MemoryThrottle``.

``KEYS[1]`` is ``<prefix>throttle:{<expert>}:``. Keys: ``log`` (zset permit id by
acquisition time), ``tok`` (hash permit id -> tokens), ``toksum`` (tokens in the
log), ``conc`` (zset permit id by expiry), ``blocked`` (upstream block, epoch s).
"""

from __future__ import annotations

from kascade.gateway.ledger import _limits

_COMMON = f"""
local base = KEYS[1]
local MINUTE = {_limits.MINUTE_S}

local function f6(x) return string.format('%.6f', x) end

-- Drops admissions older than a minute and expired concurrency permits.
local function prune(now)
  local horizon = now - MINUTE
  local old = redis.call('ZRANGEBYSCORE', base .. 'log', '-inf', horizon)
  if #old > 0 then
    local gone = 0
    for _, id in ipairs(old) do
      gone = gone + (tonumber(redis.call('HGET', base .. 'tok', id)) or 0)
      redis.call('HDEL', base .. 'tok', id)
    end
    redis.call('ZREMRANGEBYSCORE', base .. 'log', '-inf', horizon)
    redis.call('DECRBY', base .. 'toksum', string.format('%.0f', gone))
  end
  redis.call('ZREMRANGEBYSCORE', base .. 'conc', '-inf', now)
end
"""

ACQUIRE = (
    _COMMON
    + f"""
-- ARGV: now, rpm, tpm, max_concurrency (0 = unlimited), tokens, permit id, permit ttl
-- -> {{0, id}} admitted, or {{refusal code, retry_after_s}}
local now, rpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local tpm, maxc = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, id, ttl = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
prune(now)
local blocked = tonumber(redis.call('GET', base .. 'blocked')) or 0
if blocked > now then return {{1, f6(blocked - now)}} end
if maxc > 0 and redis.call('ZCARD', base .. 'conc') >= maxc then
  local first = redis.call('ZRANGE', base .. 'conc', 0, 0, 'WITHSCORES')
  return {{2, f6(math.min({_limits.CONCURRENCY_RETRY_S}, tonumber(first[2]) - now))}}
end
local n = redis.call('ZCARD', base .. 'log')
if rpm > 0 and n >= rpm then
  local e = redis.call('ZRANGE', base .. 'log', n - rpm, n - rpm, 'WITHSCORES')
  return {{3, f6(tonumber(e[2]) + MINUTE - now)}}
end
local sum = tonumber(redis.call('GET', base .. 'toksum')) or 0
if tpm > 0 and sum + tokens > tpm then
  if tokens > tpm then return {{4, f6(MINUTE)}} end
  -- When enough of the oldest tokens have left the window for this call to fit.
  -- Read in pages: only a refusal pays for this, and only up to the entry that frees enough.
  local left, start = sum, 0
  while true do
    local entries = redis.call('ZRANGE', base .. 'log', start, start + 99, 'WITHSCORES')
    if #entries == 0 then break end
    for i = 1, #entries, 2 do
      left = left - (tonumber(redis.call('HGET', base .. 'tok', entries[i])) or 0)
      if left + tokens <= tpm then return {{4, f6(tonumber(entries[i + 1]) + MINUTE - now)}} end
    end
    start = start + 100
  end
  return {{4, f6(MINUTE)}}
end
redis.call('ZADD', base .. 'log', now, id)
redis.call('HSET', base .. 'tok', id, string.format('%.0f', tokens))
redis.call('INCRBY', base .. 'toksum', string.format('%.0f', tokens))
redis.call('ZADD', base .. 'conc', now + ttl, id)
local keep = math.ceil(MINUTE) + 60
redis.call('EXPIRE', base .. 'log', keep)
redis.call('EXPIRE', base .. 'tok', keep)
redis.call('EXPIRE', base .. 'toksum', keep)
redis.call('EXPIRE', base .. 'conc', math.ceil(ttl) + 60)
return {{0, id}}
"""
)

RELEASE = """
-- ARGV: permit id
redis.call('ZREM', KEYS[1] .. 'conc', ARGV[1])
return 1
"""

BLOCK = """
-- ARGV: until, now. Never shortens an existing block.
local until_, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local current = tonumber(redis.call('GET', KEYS[1] .. 'blocked')) or 0
if until_ > current and until_ > now then
  redis.call('SET', KEYS[1] .. 'blocked', ARGV[1], 'EX', math.ceil(until_ - now) + 1)
end
return 1
"""

STATE = (
    _COMMON
    + """
-- ARGV: now -> {requests, tokens, in_flight, blocked_until or ''}
local now = tonumber(ARGV[1])
prune(now)
local blocked = tonumber(redis.call('GET', base .. 'blocked')) or 0
local b = ''
if blocked > now then b = redis.call('GET', base .. 'blocked') end
return {redis.call('ZCARD', base .. 'log'),
        tonumber(redis.call('GET', base .. 'toksum')) or 0,
        redis.call('ZCARD', base .. 'conc'), b}
"""
)
