"""The Lua scripts that make each fleet-wide decision atomic in Redis, in one round trip.

Every script reads the clock of the Redis server (TIME), so pods whose clocks disagree still count in the
same windows. The keys of one SmtpRelay share a hash tag (`{namespace/name}`): on a Redis Cluster they live
in one slot, so a script may touch several of them. Pure data: policy.limits_redis loads and runs them.
"""

from __future__ import annotations

from typing import Final

_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

RATE: Final = (
    _NOW_MS
    + """
-- KEYS[i]: the counter of limit i (its buckets are KEYS[i]..':'..bucket number).
-- ARGV[1]: messages to count (0: is there room for one?); ARGV[2i], ARGV[2i+1]: limit i and its window in ms.
-- The same sliding window as policy.ratelimit.SlidingWindow: the previous fixed bucket, weighted by the share
-- of it still inside the window, plus the current one. Returns 0 (counted, or room left), else the number
-- of the first limit without room: then nothing is counted.
local cost = tonumber(ARGV[1])
local need = math.max(cost, 1)
local current = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  local bucket = math.floor(now / window)
  local key = KEYS[i] .. ':' .. bucket
  local count = tonumber(redis.call('GET', key) or '0')
  local previous = tonumber(redis.call('GET', KEYS[i] .. ':' .. (bucket - 1)) or '0')
  local weight = 1 - (now - bucket * window) / window
  if previous * weight + count + need > limit then
    return i
  end
  current[i] = key
end
if cost > 0 then
  for i = 1, #KEYS do
    redis.call('INCRBY', current[i], cost)
    redis.call('PEXPIRE', current[i], 2 * tonumber(ARGV[2 * i + 1]))
  end
end
return 0
"""
)

AUTH_RESERVE: Final = (
    _NOW_MS
    + """
-- KEYS: failures (sorted set, score = time), checks under way (counter), cool-down (flag with a TTL).
-- ARGV: max failures, window ms, TTL of the under-way counter ms, 1 to reserve a check (0: only ask).
-- Returns 1 when the address may try (and, reserving, the check is counted as under way), else 0.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local pending = tonumber(redis.call('GET', KEYS[2]) or '0')
if redis.call('ZCARD', KEYS[1]) + pending >= tonumber(ARGV[1]) then
  return 0
end
if ARGV[4] == '1' then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
end
return 1
"""
)

AUTH_FAILURE: Final = (
    _NOW_MS
    + """
-- KEYS: as AUTH_RESERVE. ARGV: max failures, window ms, cool-down ms, a unique member 'id:username'.
-- Settles a reserved check as failed. Returns {failures in the window, 1 if the address is now blocked}.
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  redis.call('DECR', KEYS[2])
end
local max = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now, ARGV[4])
local failures = redis.call('ZCARD', KEYS[1])
if failures > max then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, failures - max - 1)
  failures = max
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
if failures >= max then
  redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[3]))
  return {failures, 1}
end
return {failures, 0}
"""
)

AUTH_SUCCESS: Final = """
-- KEYS: as AUTH_RESERVE. ARGV[1]: the username. Settles a reserved check as a login: forgets this
-- username's failures from this address (members are 'id:username'), no others.
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  redis.call('DECR', KEYS[2])
end
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local colon = string.find(member, ':', 1, true)
  if colon and string.sub(member, colon + 1) == ARGV[1] then
    redis.call('ZREM', KEYS[1], member)
  end
end
return 0
"""

PACE: Final = """
-- Traffic shaping's rates for the fleet: GCRA without burst, in microseconds of the Redis server's clock.
-- KEYS[1]: the destination's line (the latest place handed to a refused admission); KEYS[1+i]: the theoretical
-- arrival time (TAT) of rate i. ARGV[1]: the longest wait of an admission; ARGV[2]: the spacing of places in
-- the line; ARGV[2+i]: how far rate i's TAT moves on per admission. Returns {1, wait} (admitted: every TAT
-- moved on) or {0, delay} (refused: the place in the line, that far from now). Keys expire once in the past.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local due = now
for i = 2, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat > due then
    due = tat
  end
end
if due - now > tonumber(ARGV[1]) then
  local place = math.max(due, tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[2]))
  redis.call('SET', KEYS[1], string.format('%.0f', place), 'PX', math.ceil((place - now) / 1000) + 1000)
  return {0, place - now}
end
for i = 2, #KEYS do
  local tat = due + tonumber(ARGV[i + 1])
  redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
return {1, due - now}
"""
