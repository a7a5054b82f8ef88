"""Lua scripts that reserve and finish one reservation in several books at once.

A tenant's escalation holds money in the expert's book and in the tenant's book: one
script call checks every book and holds in all or none, so no state exists where one
book was charged and the other refused. The per-book logic is the single-book
scripts' own body (``_lua_ledger``), run once per key with ``base`` rebound: both
kinds of reservation keep one set of semantics.

Books of one reservation must live on one Redis node (a standalone Redis or one
cluster slot); see ``docs/ledger.md``.
"""

from __future__ import annotations

from kascade.gateway.ledger import _lua_ledger


def _body(script: str) -> str:
    if not script.startswith(_lua_ledger._COMMON):
        raise AssertionError("ledger scripts must start with the shared functions")
    return script[len(_lua_ledger._COMMON) :]


RESERVE = (
    _lua_ledger._COMMON
    + "local function reserve_one(ARGV)\n"
    + _body(_lua_ledger.RESERVE)
    + """
end
-- ARGV: amount, id, now, ttl, then per key: window_key, limit
-- -> {0} when held in every book, else {i, spent, reserved} of the first refusing book
local amount, id, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
for i = 1, #KEYS do
  base = KEYS[i]
  local wk, limit = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  local r = reserve_one({wk, limit, amount, id, now, ttl})
  if tonumber(r[1]) ~= 1 then
    for j = 1, i - 1 do
      base = KEYS[j]
      unhold(id, tonumber(amount), ARGV[3 + 2 * j])
    end
    return {i, r[2], r[3]}
  end
end
return {0}
"""
)

FINISH = (
    _lua_ledger._COMMON
    + "local function finish_one(ARGV)\n"
    + _body(_lua_ledger.FINISH)
    + """
end
-- ARGV as the single-book FINISH; the reservation id is the same in every book.
local changed = 0
for i = 1, #KEYS do
  base = KEYS[i]
  changed = changed + finish_one(ARGV)
end
return changed
"""
)
