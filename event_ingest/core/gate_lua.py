"""The spacing gate's Lua: every change to a gate record, atomic, on Redis' own clock.

Each statement below is one step of :mod:`.gate`'s failure timeline (read there first): the era prelude
(``ERA_PRELUDE``) decides what of Redis' memory can be trusted after a restart, a failover or an eviction;
the acquire, the close, the close that reserves the holder's next slot and the give-back run on top of
it. :class:`.gate.Gate` registers them by these names when it is made.
"""

from __future__ import annotations

import redis

# Runs first in the acquire script. It decides what of Redis' memory can be trusted now, and reads the gate record
# accordingly: after it, ``next_at`` (µs) is the earliest the next slot may open, and ``hold_until``/``holder``
# the reservation in flight, if the record can vouch for one.
# KEYS[1] = gate hash for one source (fields: era, next, holder, hold_until, granted_at; µs on Redis' clock)
# KEYS[2] = the era hash
# ARGV[1] = hold_us: how long a reservation lasts if never closed (timeout + interval)
# ARGV[2] = idle TTL of the gate hash in ms
ERA_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local hold = tonumber(ARGV[1])
-- Which server this is (run_id: new on every start of a Redis process, and a promoted replica's own) and how
-- many keys it has evicted. INFO is read inside the script: nothing can change between the check and the use.
local function info_field(section, name)  -- a plain find: a pattern scan of the text costs more than INFO
  local text = redis.call('INFO', section)
  local at = string.find(text, name, 1, true)
  return at and string.match(text, '^%w+', at + #name)
end
local server = info_field('server', '\\nrun_id:')
local evicted = info_field('stats', '\\nevicted_keys:')
if not server or not evicted then
  return redis.error_reply('INFO shows no run_id or evicted_keys: the spacing gate cannot tell a restart, a ' ..
    'failover or an eviction from a whole memory, so it grants nothing')
end
local era = redis.pcall('HMGET', KEYS[2], 'id', 'start', 'server', 'evicted', 'lost')
if era.err then era = {} end  -- another shape (an older version's bare start time): read as no era at all
local era_id, era_start, lost = era[1], tonumber(era[2]), tonumber(era[5])
if not era_id or era[3] ~= server then
  -- No era (Redis restarted empty, FLUSHALL, the era key evicted), or one written by another server (a promoted
  -- replica, a restart from an AOF or RDB): what this memory says about requests in flight may be missing
  -- the last grants. A new era begins now; every record written before it is distrusted.
  era_id, era_start, lost = server .. '-' .. t[1] .. '.' .. t[2], now, now  -- TIME's strings: exact
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'id', era_id, 'start', now, 'server', server, 'evicted', evicted, 'lost', now)
elseif era[4] ~= evicted then
  -- Keys were evicted since the era last looked: a gate record may be gone with its reservation. Eviction
  -- takes whole keys, so the records still here are intact; only a missing one is now in doubt.
  lost = now
  redis.call('HSET', KEYS[2], 'evicted', evicted, 'lost', now)
end
local record = redis.call('HMGET', KEYS[1], 'era', 'next', 'hold_until', 'holder')
local next_at, hold_until, holder = tonumber(record[2]), tonumber(record[3]), record[4]
if not next_at then
  -- No record: a new source (or idle past the record's TTL), or one lost with a request in flight that was
  -- sent before the loss was noticed and is over by then + hold.
  next_at, hold_until, holder = lost + hold, nil, nil
  redis.call('HSET', KEYS[1], 'era', era_id, 'next', next_at)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif record[1] and record[1] ~= era_id then
  -- Written before this era began: its next slot and its reservation are those of a memory that may have
  -- lost later grants (and of another server's clock). Read as missing at the era's start. (A record with
  -- no era at all was written in this memory by an earlier version running beside this one: read as it does.)
  next_at, hold_until, holder = era_start + hold, nil, nil
  redis.call('HDEL', KEYS[1], 'holder', 'hold_until', 'granted_at')
  redis.call('HSET', KEYS[1], 'era', era_id, 'next', next_at)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
"""

# ARGV[3] = token of the caller
# Returns {1, now_us} when granted (the grant time on Redis' clock), {0, wait_us} when the caller must wait.
ACQUIRE_LUA = (
    ERA_PRELUDE
    + """
if hold_until and hold_until > now then
  -- Someone's request is in flight; its close() will set the next slot.
  return {0, hold_until - now}
end
if now < next_at then
  return {0, next_at - now}
end
redis.call('HSET', KEYS[1], 'era', era_id, 'holder', ARGV[3], 'hold_until', now + hold, 'granted_at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, now}
"""
)

# The close runs without the prelude (it costs the prelude's INFO calls, about half the gate's Redis time, and
# would change nothing): it never creates a record and never touches a record's era, so whatever it writes
# into a record of an earlier era is still read as distrusted by the next acquire's prelude, and a record that
# is gone stays gone for that prelude to explain (restart, flush, eviction). In a record of this era it only
# ever moves the slot later, so never before the wait the prelude wrote after a loss.
# KEYS[1] = gate hash
# ARGV[1] = token of the caller (its reservation is cleared only if it still owns it)
# ARGV[2] = interval_us
# ARGV[3] = defer_us (Retry-After, or an unanswered request's wait; 0 if none)
# ARGV[4] = idle TTL of the gate hash in ms
# Returns {microseconds until the next slot opens, now on Redis' clock}.
CLOSE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next_slot = now + math.max(tonumber(ARGV[2]), tonumber(ARGV[3]))
local record = redis.call('HMGET', KEYS[1], 'next', 'holder')
local current = tonumber(record[1])
if not current then
  return {next_slot - now, now}  -- lost with its reservation: the next acquire sees how, and waits
end
-- Only ever move the slot later: a response arriving now proves its request arrived earlier, whoever owned
-- the reservation; and the prelude's wait after a loss stays.
if current > next_slot then next_slot = current end
redis.call('HSET', KEYS[1], 'next', next_slot)
if record[2] == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'holder', 'hold_until')
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {next_slot - now, now}
"""


# A close after a good response that also reserves the holder's next slot. The prelude first, as an acquire:
# after a loss the next slot is no earlier than the loss + hold, and a reservation is written only into a record
# of the era the prelude just vouched for.
# ARGV[3] = token of the caller
# ARGV[4] = interval_us
# Returns {µs until the next slot, now on Redis' clock, 1 if that slot is reserved for the caller else 0}.
CLOSE_AND_RESERVE_LUA = (
    ERA_PRELUDE
    + """
local next_slot = now + tonumber(ARGV[4])
-- Only ever later: the prelude's wait after a loss, or a Retry-After another holder's close set.
if next_at > next_slot then next_slot = next_at end
if holder and holder ~= ARGV[3] and hold_until and hold_until > now then
  -- Another holder's request is in flight (not how a drain with the lease works, but the gate does not lean on
  -- the lease): close ours, reserve nothing.
  redis.call('HSET', KEYS[1], 'era', era_id, 'next', next_slot)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {next_slot - now, now, 0}
end
redis.call('HSET', KEYS[1], 'era', era_id, 'next', next_slot,
           'holder', ARGV[3], 'hold_until', next_slot + hold, 'granted_at', next_slot)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {next_slot - now, now, 1}
"""
)

# An unused reservation given back (its holder stops): the slot stays where it was, free for whoever asks.
# KEYS[1] = gate hash; ARGV[1] = token of the caller
GIVE_BACK_LUA = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'holder', 'hold_until')
end
return 0
"""


def backdate_era(client: redis.Redis, era_key: str, seconds: float) -> None:
    """For tests and tools: make ``era_key`` an era of the server ``client`` talks to, whole for ``seconds``
    already (as a Redis that has run that long without a loss)."""
    server, stats = client.info("server"), client.info("stats")
    now_s, now_us = client.time()
    start = (now_s - int(seconds)) * 1_000_000 + now_us
    client.delete(era_key)
    client.hset(
        era_key,
        mapping={
            "id": f"{server['run_id']}-{start}",
            "start": start,
            "server": server["run_id"],
            "evicted": stats["evicted_keys"],
            "lost": start,
        },
    )
