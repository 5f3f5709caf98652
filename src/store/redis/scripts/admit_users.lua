-- Admit users: let named users in out of turn, in order (the memory store's
-- admit_named): one holding an admission keeps it; within max_active (but
-- for pass-through) unless overridden; a waiting user leaves the line with
-- their ticket, anyone else gets a new one. Counted as admissions, not in
-- the rate buckets the line's estimates are taken from.
-- KEYS: the queue's keys (prelude).
-- ARGV: now, request id, how long to keep the result (ms), override (1/0),
--       user...
-- Returns {'ok', epoch, {kind, ticket, admitted_at, expires_at}...} with
-- kind 'admitted', 'already' or 'no_capacity'; or {'no_queue'} /
-- {'closed', closing reason}, or {'request_reused'} when the id was used naming other
-- users. The result is kept under the request id with the users it named
-- (apart from AdmitBatch's results: ids cannot hold '|'), and a rerun
-- naming the same users returns it.

local key = 'users|' .. ARGV[2]
local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
forget_lapsed_results()
local users = {}
for i = 5, #ARGV do
  users[#users + 1] = ARGV[i]
end
local previous = redis.call('HGET', K_BATCHES, key)
if previous then
  local kept = cjson.decode(previous)
  if #kept.users ~= #users then
    return { 'request_reused' }
  end
  for i, user in ipairs(users) do
    if kept.users[i] ~= user then
      return { 'request_reused' }
    end
  end
  return kept.result
end
if cfg.mode == 'closed' then
  return { 'closed', cfg.closed_reason }
end
prepare(cfg)
local capped = cfg.mode ~= 'pass_through' and ARGV[4] ~= '1'
local out = { 'ok', cfg.epoch }
local admitted = 0
for i = 5, #ARGV do
  local user = ARGV[i]
  local record = redis.call('HGET', K_ADMITTED, user)
  if record then
    local ticket, at, expires = string.match(record, '^(%d+):(%d+):(%d+)$')
    out[#out + 1] = { 'already', tonumber(ticket), tonumber(at), tonumber(expires) }
  elseif capped and free_slots(cfg) == 0 then
    out[#out + 1] = { 'no_capacity', 0, 0, 0 }
  else
    local ticket = leave_line_admitted(user)
    if not ticket then
      -- Pre-queued (counted when they arrived) or not in line at all.
      if not remove_from_line(cfg, user) then
        count_arrivals(cfg, 1)
      end
      ticket = redis.call('INCR', K_SEQ)
      gave_tickets = ticket
    end
    local expires = admit_user(cfg, user, ticket)
    admitted = admitted + 1
    out[#out + 1] = { 'admitted', ticket, NOW, expires }
  end
end
if admitted > 0 then
  redis.call('HINCRBY', K_STATS, 'admitted', admitted)
end
if gave_tickets then
  note_joined(gave_tickets)
end
keep_result(key, { users = users, result = out }, ARGV[3])
return out
