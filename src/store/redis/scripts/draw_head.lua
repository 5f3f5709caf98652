-- Draw head: the head's part of a scheduled opening over sub-lines
-- (draw_sub_line.lua has the sub-lines'; docs/design.md, "The opening").
-- KEYS: the head's keys (prelude). ARGV: now, step, then by step:
--   'close': the opening begins ('closing') if due by the caller's clock
--     and the head's `opens_at`: {'ok', draw}; from then on every head
--     script that reserves or admits waits for it (prelude.lua,
--     `open_head_first`), and the opening can no longer be moved. Not
--     due: {'ok', 'not_due', field, value, ...} (the head's config, for
--     a sub-line's copy of an opening since moved).
--   'open', size, untold: once every sub-line's pre-queue is frozen,
--     reserves `size` tickets (all they hold) after every ticket leased,
--     as prelude.lua's `open_if_due` does for one slot ('opening'); a
--     draw under way or over counts it taken up again, and one over goes
--     on, if `untold` of them are on sub-lines not told the reservation
--     yet. Returns {'ok', what each sub-line is told ('frozen', or 'done'
--     with nobody to draw), the last ticket reserved, 1 if the draw was
--     over and goes on, how many times it was taken up, the ticket below
--     the next a plan gives, the queue's epoch}; {'ok', 'none', '0'} if
--     the opening was not begun.
--   'opened': every sub-line was told; the draw may start ('frozen', or
--     'done' with nobody to draw). Returns {'ok'}.
--   'resume': a draw over while a sub-line still holds someone to draw
--     goes on ('assigning'). Returns {'ok'}.
--   'seed', seed: the draw starts under `seed` unless it has, and
--     returns {'ok', draw, the seed it runs under, round, 1 if a plan is
--     journalled, times taken up, the reservation's last ticket};
--     {'ok', 'none'} before the opening, or
--     OPENING when it
--     is due and not made (lease.lua). The round counts the plans made
--     and carried out.
--   'assigning': every pre-queued user has a draw key. Returns {'ok'}.
--   'plan', round, top, sub-line, user, ...: the lowest draw keys over
--     all sub-lines, in order, read after the round was, and the highest
--     drawn ticket any sub-line placed. Returns the plan
--     journalled, {'ok', 'plan', first ticket, sub-line, user, ticket,
--     ...}: one left undone, else these users with their tickets from the
--     next of the reservation, unless another plan came since the round
--     ({'ok', 'again'}). Past the reservation (a sub-line made again took
--     pre-queued users after it), tickets come from the sequence.
--   'placed', first ticket: the plan so numbered is carried out.
--   'done', times taken up (as the step read them): the draw is over,
--     unless it was taken up again since. Returns {'ok', 1 if over}.
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
  'draw_seed', 'draw_round', 'draw_first', 'draw_taken')
local round = tonumber(v[7]) or 0
-- How many times a sub-line told the reservation late (made again empty
-- since) brought users into the draw: a draw is not ended by a step that
-- began before the last.
local taken = tonumber(v[9]) or 0
local draw = v[1] or 'none'

if step == 'close' then
  if draw == 'none' then
    local opens_at = tonumber(v[2]) or 0
    if opens_at == 0 or NOW < opens_at then
      -- Not due by the head's time: a sub-line held a copy of an opening
      -- since moved.
      local out = redis.call('HGETALL', K_CONFIG)
      table.insert(out, 1, 'not_due')
      table.insert(out, 1, 'ok')
      return out
    end
    draw = 'closing'
    redis.call('HSET', K_CONFIG, 'draw', draw)
  end
  return { 'ok', draw }
end

if step == 'open' then
  if draw == 'closing' then
    local size = tonumber(ARGV[3])
    local next_ticket = (tonumber(redis.call('GET', K_SEQ)) or 0) + 1
    local last = redis.call('INCRBY', K_SEQ, size)
    draw = 'opening'
    redis.call('HSET', K_CONFIG, 'draw', draw, 'draw_next', next_ticket, 'draw_first', next_ticket,
      'draw_end', last)
    v[3], v[4], v[8] = next_ticket, last, next_ticket
  end
  if draw == 'none' then
    return { 'ok', 'none', '0' }
  end
  -- A draw over, and a sub-line not told the reservation yet (made again
  -- empty since, then pre-queued on) holds someone: it goes on for them.
  local resumed = 0
  if tonumber(ARGV[4]) > 0 and draw ~= 'opening' then
    taken = taken + 1
    redis.call('HSET', K_CONFIG, 'draw_taken', taken)
    if draw == 'done' then
      draw, resumed = 'assigning', 1
      redis.call('HSET', K_CONFIG, 'draw', draw)
    end
  end
  -- What each sub-line is told: the draw under way, or none to make.
  local told = 'frozen'
  local last, first = tonumber(v[4]) or 0, tonumber(v[8]) or 0
  if draw == 'done' or (draw == 'opening' and last < first) then
    told = 'done'
  end
  -- Every ticket below the next a plan gives is placed, or planned and
  -- held by a sub-line still to place it (prelude's `drawn_hold`).
  local planned = (tonumber(v[3]) or first) - 1
  return { 'ok', told, string.format('%d', last), resumed, tostring(taken),
    string.format('%d', planned), redis.call('HGET', K_CONFIG, 'created_at_ms') }
end

if step == 'opened' then
  if draw == 'opening' then
    draw = (tonumber(v[4]) or 0) < (tonumber(v[8]) or 0) and 'done' or 'frozen'
    redis.call('HSET', K_CONFIG, 'draw', draw)
  end
  return { 'ok' }
end

if step == 'seed' then
  -- Not before every sub-line was told the reservation (step 'opened').
  open_head_first(v[1], v[2])
  if draw == 'none' then
    return { 'ok', 'none' }
  end
  if draw == 'frozen' then
    draw = 'hashing'
    redis.call('HSET', K_CONFIG, 'draw', draw)
  end
  -- A draw taken up again after an opening with nobody to draw has no
  -- seed yet: it takes this one.
  if (v[6] or '') == '' and draw ~= 'done' then
    v[6] = ARGV[3]
    redis.call('HSET', K_CONFIG, 'draw_seed', v[6])
  end
  return { 'ok', draw, v[6] or '', tostring(round), v[5] and '1' or '0', tostring(taken),
    string.format('%d', tonumber(v[4]) or 0) }
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
  if draw ~= 'assigning' or tonumber(ARGV[3]) ~= round then
    return { 'ok', 'again' }
  end
  -- Above every drawn ticket a sub-line placed, should the head have
  -- come back from a replica without its last plans.
  local next_ticket = math.max(tonumber(v[3]), tonumber(ARGV[4]) + 1)
  local last = tonumber(v[4])
  local plan = { string.format('%d', next_ticket) }
  for i = 5, #ARGV, 2 do
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

if step == 'resume' then
  if draw == 'done' then
    redis.call('HSET', K_CONFIG, 'draw', 'assigning')
  end
  return { 'ok' }
end

if step == 'done' then
  if draw == 'assigning' and not v[5] and tonumber(ARGV[3]) == taken then
    redis.call('HSET', K_CONFIG, 'draw', 'done')
    return { 'ok', 1 }
  end
  return { 'ok', 0 }
end

return redis.error_reply('draw_head: unknown step ' .. tostring(step))
