-- Sub-line resync: a sub-line in another history than it last checked
-- (prelude.lua, `load_config`) takes again the admissions the head settled
-- lately: a user the head admitted and whom the sub-line has waiting at
-- that very ticket lost their pop with the sub-line's primary, and is
-- admitted again with the head's record (the same ticket and times, so
-- the same token). Anyone else is left as the sub-line has them: a user
-- no longer waiting there was admitted, left or released since.
-- KEYS: the sub-line's keys (prelude). ARGV: now, last ('1' for the last
-- call: the history is then recorded), then the head's entries
-- ('ticket|admitted at|expires at|user'). Returns {'ok', how many taken
-- again} or {'no_queue'}.

if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
local taken, left = 0, {}
for i = 3, #ARGV do
  local ticket, at, expires, user = string.match(ARGV[i], '^(%d+)|(%d+)|(%d+)|(.*)$')
  if user and tonumber(redis.call('ZSCORE', K_WAITING, user)) == tonumber(ticket) then
    redis.call('ZREM', K_WAITING, user)
    redis.call('ZREM', K_SEEN, user)
    redis.call('ZADD', K_ACTIVE, expires, user)
    redis.call('HSET', K_ADMITTED, user, ticket .. ':' .. at .. ':' .. expires)
    left[#left + 1] = { 'l', tonumber(ticket), 1 }
    taken = taken + 1
  end
end
log_events(left)
if ARGV[2] == '1' then
  redis.call('HSET', K_CONFIG, 'sub_line_history', history_now())
end
return { 'ok', taken }
