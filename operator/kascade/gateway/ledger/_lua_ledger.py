"""Lua scripts of the Redis ledger; each operation is one atomic script call.

They mirror ``_books.Books`` step for step. ``KEYS[1]`` is the expert's base key
``<prefix>ledger:{<expert>}:``; the other keys are derived from it and share its hash
tag, so all keys of one expert live in one cluster slot. Numbers are integer nanos
held in Lua doubles (exact below 2**53); ``fmt`` writes them without exponent.
"""

from __future__ import annotations

from kascade.gateway.ledger import _books, _windows

_COMMON = f"""
local base = KEYS[1]
local ROLL_KEY = '{_windows.ROLLING_KEY}'
local ROLL_BUCKETS = {_windows.ROLLING_BUCKETS}
local ROLL_KEEP = {_windows.ROLLING_SPAN_S + 2 * _windows.BUCKET_S + 3600}
local DONE_KEEP = {_books.DONE_KEEP_S}

-- '%.0f' of -0 is '-0', which Redis does not take as an integer.
local function fmt(x)
  if x == 0 then return '0' end
  return string.format('%.0f', x)
end

local function split(s)
  local out = {{}}
  for part in string.gmatch(s, '([^|]+)') do out[#out + 1] = part end
  return out
end

local function keep_for(wk)
  if string.sub(wk, 1, 4) == 'day:' then return {_windows.DAY_KEEP_S} end
  return {_windows.MONTH_KEEP_S}
end

-- Drops one-minute buckets older than 24h from the running total.
local function advance_rolling(now)
  local cutoff = math.floor(now / 60) - ROLL_BUCKETS
  local old = redis.call('ZRANGEBYSCORE', base .. 'roll:idx', '-inf', '(' .. fmt(cutoff))
  if #old > 0 then
    local gone = 0
    for _, m in ipairs(old) do
      gone = gone + (tonumber(redis.call('HGET', base .. 'roll:buckets', m)) or 0)
      redis.call('HDEL', base .. 'roll:buckets', m)
    end
    redis.call('ZREMRANGEBYSCORE', base .. 'roll:idx', '-inf', '(' .. fmt(cutoff))
    redis.call('DECRBY', base .. 'roll:total', fmt(gone))
  end
end

local function charge(wk, nanos, now)
  local m = math.floor(now / 60)
  if wk == ROLL_KEY then
    advance_rolling(now)
    local newest = redis.call('ZREVRANGE', base .. 'roll:idx', 0, 0)
    -- A later bucket exists (clock skew between replicas): charge it, so the spend
    -- stays counted at least as long.
    if newest[1] and tonumber(newest[1]) > m then m = tonumber(newest[1]) end
    redis.call('HINCRBY', base .. 'roll:buckets', fmt(m), fmt(nanos))
    redis.call('ZADD', base .. 'roll:idx', m, fmt(m))
    redis.call('INCRBY', base .. 'roll:total', fmt(nanos))
    redis.call('EXPIRE', base .. 'roll:buckets', ROLL_KEEP)
    redis.call('EXPIRE', base .. 'roll:idx', ROLL_KEEP)
    redis.call('EXPIRE', base .. 'roll:total', ROLL_KEEP)
  else
    local k = base .. 'spend:' .. wk
    redis.call('INCRBY', k, fmt(nanos))
    redis.call('EXPIRE', k, keep_for(wk))
  end
  return m
end

local function adjust(wk, m, delta, now)
  if wk == ROLL_KEY then
    advance_rolling(now)
    if redis.call('HEXISTS', base .. 'roll:buckets', fmt(m)) == 1 then
      redis.call('HINCRBY', base .. 'roll:buckets', fmt(m), fmt(delta))
      redis.call('INCRBY', base .. 'roll:total', fmt(delta))
      return m
    end
    if delta > 0 then return charge(wk, delta, now) end
    return m
  end
  local k = base .. 'spend:' .. wk
  if redis.call('EXISTS', k) == 1 then
    redis.call('INCRBY', k, fmt(delta))
  elseif delta > 0 then
    charge(wk, delta, now)
  end
  return m
end

local function spent(wk, now)
  if wk == ROLL_KEY then
    advance_rolling(now)
    return tonumber(redis.call('GET', base .. 'roll:total')) or 0
  end
  return tonumber(redis.call('GET', base .. 'spend:' .. wk)) or 0
end

local function unhold(id, amount, wk)
  redis.call('HDEL', base .. 'held', id)
  redis.call('ZREM', base .. 'expiry', id)
  local left = redis.call('HINCRBY', base .. 'reserved', wk, fmt(-amount))
  if left <= 0 then redis.call('HDEL', base .. 'reserved', wk) end
end

-- Only expired reservations keep a tombstone (see _books.py).
local function finish(id, state, charged, wk, m, now)
  if state ~= 'expired' then
    redis.call('HDEL', base .. 'done', id)
    redis.call('ZREM', base .. 'forget', id)
    return
  end
  local forget_at = now + DONE_KEEP
  redis.call('HSET', base .. 'done', id,
    state .. '|' .. fmt(charged) .. '|' .. wk .. '|' .. fmt(m))
  redis.call('ZADD', base .. 'forget', forget_at, id)
  redis.call('EXPIRE', base .. 'done', DONE_KEEP + 3600)
  redis.call('EXPIRE', base .. 'forget', DONE_KEEP + 3600)
end

-- Expired reservations become worst-case spend; old tombstones are forgotten.
local function sweep(now)
  local expired = redis.call('ZRANGEBYSCORE', base .. 'expiry', '-inf', now)
  for _, id in ipairs(expired) do
    local rec = redis.call('HGET', base .. 'held', id)
    if rec then
      local f = split(rec)
      local amount, wk = tonumber(f[1]), f[2]
      unhold(id, amount, wk)
      local m = charge(wk, amount, now)
      finish(id, 'expired', amount, wk, m, now)
    else
      redis.call('ZREM', base .. 'expiry', id)
    end
  end
  local old = redis.call('ZRANGEBYSCORE', base .. 'forget', '-inf', now)
  if #old > 0 then
    for _, id in ipairs(old) do redis.call('HDEL', base .. 'done', id) end
    redis.call('ZREMRANGEBYSCORE', base .. 'forget', '-inf', now)
  end
end
"""

RESERVE = (
    _COMMON
    + """
-- ARGV: window_key, limit, amount, id, now, ttl -> {admitted, spent, reserved}
local wk, limit, amount, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
sweep(now)
local s = spent(wk, now)
local r = tonumber(redis.call('HGET', base .. 'reserved', wk)) or 0
if s + r + amount > limit then return {0, fmt(s), fmt(r)} end
redis.call('HSET', base .. 'held', id,
  fmt(amount) .. '|' .. wk .. '|' .. ARGV[5] .. '|' .. tostring(now + ttl))
redis.call('ZADD', base .. 'expiry', now + ttl, id)
redis.call('HINCRBY', base .. 'reserved', wk, fmt(amount))
return {1, fmt(s), fmt(r)}
"""
)

FINISH = (
    _COMMON
    + """
-- ARGV: id, actual, state ('settled' | 'released'), now -> 1 if it changed anything
local id, actual, state, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
sweep(now)
local rec = redis.call('HGET', base .. 'held', id)
if rec then
  local f = split(rec)
  local amount, wk = tonumber(f[1]), f[2]
  unhold(id, amount, wk)
  local m = charge(wk, actual, now)
  finish(id, state, actual, wk, m, now)
  return 1
end
local done = redis.call('HGET', base .. 'done', id)
if done then
  local f = split(done)
  if f[1] == 'expired' then
    -- The holder survived after all: correct the worst case to what it reports.
    local wk = f[3]
    local m = adjust(wk, tonumber(f[4]), actual - tonumber(f[2]), now)
    finish(id, state, actual, wk, m, now)
    return 1
  end
end
return 0
"""
)

SNAPSHOT = (
    _COMMON
    + """
-- ARGV: window_key, now -> {spent, reserved}
local wk, now = ARGV[1], tonumber(ARGV[2])
sweep(now)
local s = spent(wk, now)
local r = tonumber(redis.call('HGET', base .. 'reserved', wk)) or 0
return {fmt(s), fmt(r)}
"""
)
