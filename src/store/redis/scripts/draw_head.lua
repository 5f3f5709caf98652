-- Draw head: the head's part of a scheduled opening over sub-lines
-- (draw_sub_line.lua has the sub-lines'; docs/design.md, "A scheduled
-- opening over sub-lines").
-- KEYS: the head's keys (prelude). ARGV: now, step, then by step:
--   'open', size: once every sub-line's pre-queue is frozen, reserves
--     `size` tickets (all they hold) after every ticket leased, as
--     prelude.lua's `open_if_due` does for one slot. Returns {'ok', draw,
--     the last ticket reserved}.
--   'seed', seed: the draw starts under `seed` unless it has, and
--     returns {'ok', draw, the seed it runs under, round, 1 if a plan is
--     journalled}; {'ok', 'none'} before the opening, or OPENING when it
--     is due and not made (lease.lua). The round counts the plans made
--     and carried out.
--   'assigning': every pre-queued user has a draw key. Returns {'ok'}.
--   'plan', round, sub-line, user, ...: the lowest draw keys over all
--     sub-lines, in order, read after the round was. Returns the plan
--     journalled, {'ok', 'plan', first ticket, sub-line, user, ticket,
--     ...}: one left undone, else these users with their tickets from the
--     next of the reservation, unless another plan came since the round
--     ({'ok', 'again'}). Past the reservation (a sub-line made again took
--     pre-queued users after it), tickets come from the sequence.
--   'placed', first ticket: the plan so numbered is carried out.
--   'done': the draw is over. Returns {'ok'}.
-- Or {'no_queue'}, or {'resync'} in another history than the head's
-- (lease.lua).

if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
if not same_history() then
  return { 'resync' }
end
local step = ARGV[2]
local v = redis.call('HMGET', K_CONFIG, 'draw', 'opens_at_ms', 'draw_next', 'draw_end', 'draw_plan',
  'draw_seed', 'draw_round')
local round = tonumber(v[7]) or 0
local draw = v[1] or 'none'

if step == 'open' then
  if draw == 'none' then
    local size = tonumber(ARGV[3])
    local next_ticket = (tonumber(redis.call('GET', K_SEQ)) or 0) + 1
    local last = redis.call('INCRBY', K_SEQ, size)
    draw = size == 0 and 'done' or 'frozen'
    redis.call('HSET', K_CONFIG, 'draw', draw, 'draw_next', next_ticket, 'draw_end', last)
    return { 'ok', draw, string.format('%d', last) }
  end
  return { 'ok', draw, v[4] or '0' }
end

if step == 'seed' then
  if draw == 'none' then
    open_head_first()
    return { 'ok', 'none' }
  end
  if draw == 'frozen' then
    draw = 'hashing'
    v[6] = ARGV[3]
    redis.call('HSET', K_CONFIG, 'draw', draw, 'draw_seed', v[6])
  end
  return { 'ok', draw, v[6] or '', tostring(round), v[5] and '1' or '0' }
end

if step == 'assigning' then
  if draw == 'hashing' then
    redis.call('HSET', K_CONFIG, 'draw', 'assigning')
  end
  return { 'ok' }
end

if step == 'plan' then
  if v[5] then
    local out = { 'ok', 'plan' }
    for _, item in ipairs(cjson.decode(v[5])) do
      out[#out + 1] = item
    end
    return out
  end
  -- The pools were read in an earlier round: a plan since may have
  -- placed some of those read, who must not be given tickets again.
  if tonumber(ARGV[3]) ~= round then
    return { 'ok', 'again' }
  end
  local next_ticket, last = tonumber(v[3]), tonumber(v[4])
  local plan = { string.format('%d', next_ticket) }
  for i = 4, #ARGV, 2 do
    local ticket = next_ticket
    if ticket > last then
      ticket = redis.call('INCR', K_SEQ)
    end
    next_ticket = next_ticket + 1
    plan[#plan + 1] = ARGV[i]
    plan[#plan + 1] = ARGV[i + 1]
    plan[#plan + 1] = string.format('%d', ticket)
  end
  redis.call('HSET', K_CONFIG, 'draw_next', next_ticket, 'draw_plan', cjson.encode(plan),
    'draw_round', round + 1)
  table.insert(plan, 1, 'plan')
  table.insert(plan, 1, 'ok')
  return plan
end

if step == 'placed' then
  if v[5] and cjson.decode(v[5])[1] == ARGV[3] then
    redis.call('HDEL', K_CONFIG, 'draw_plan')
    redis.call('HSET', K_CONFIG, 'draw_round', round + 1)
  end
  return { 'ok' }
end

if step == 'done' then
  if draw == 'assigning' and not v[5] then
    redis.call('HSET', K_CONFIG, 'draw', 'done')
  end
  return { 'ok' }
end

return redis.error_reply('draw_head: unknown step ' .. tostring(step))
