-- Head update: change some fields of the configuration of a queue over
-- sub-lines at its head, which raises its settings version; the caller
-- then gives each sub-line the head's settings (copy_settings.lua).
-- KEYS: the head's keys (prelude). ARGV: now, field, value, ...
-- Returns {'ok', field, value, ...} (the head's whole configuration, as
-- HGETALL gives it, settings_version among it), {'no_queue'}, or
-- {'opening_passed'} when asked to move an opening that has happened.

if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
local v = redis.call('HMGET', K_CONFIG, 'mode', 'closed_reason', 'heartbeat_timeout_ms', 'draw')
local changes = {}
for i = 2, #ARGV, 2 do
  changes[ARGV[i]] = ARGV[i + 1]
end
if changes.opens_at_ms and (v[4] or 'none') ~= 'none' then
  return { 'opening_passed' }
end
-- The queue's presence counts from now on reopening or a shorter heartbeat
-- timeout, as in update_queue.lua; each sub-line's copy does the same.
local reopened = v[1] == 'closed' and changes.mode and changes.mode ~= 'closed'
local shortened = changes.heartbeat_timeout_ms
  and tonumber(changes.heartbeat_timeout_ms) < tonumber(v[3])
if reopened or shortened then
  redis.call('HSET', K_CONFIG, 'presence_since_ms', NOW)
end
if #ARGV > 1 then
  redis.call('HSET', K_CONFIG, unpack(ARGV, 2))
end
-- A queue that is not closed has no closing reason.
if (changes.mode or v[1]) ~= 'closed' and ((v[2] or '') ~= '' or changes.closed_reason) then
  redis.call('HSET', K_CONFIG, 'closed_reason', '')
end
redis.call('HINCRBY', K_CONFIG, 'settings_version', 1)
-- An admission planned after this update reads its settings afresh: one
-- begun before it starts again.
redis.call('HINCRBY', K_CONFIG, 'admit_version', 1)
local out = redis.call('HGETALL', K_CONFIG)
table.insert(out, 1, 'ok')
return out
