-- Draw sub-line: a sub-line's part of a scheduled opening over sub-lines
-- (opening.rs, `open` and `draw_step`; docs/design.md, "The opening").
-- The memory store's twin is one queue's opening (store/memory/
-- opening.rs), which this and draw_head.lua split between the slots.
-- KEYS: the sub-line's keys (prelude). ARGV: now, step, then by step:
--   'close': the pre-queue takes nobody more (joins wait for the head's
--     reservation: prelude.lua, `prepare`) and the open block gives no
--     ticket more. Returns {'ok', how many it holds pre-queued or drawn,
--     1 if it was not told the reservation yet}.
--   'open', state, last, planned, epoch: the head reserved the drawn tickets, up
--     to `last` ('frozen'), or had none to draw ('done'); no block at or
--     below `last` is installed from then on (prelude.lua,
--     `install_block`), and no ticket at or below `planned` (joined before
--     the reservation, or drawn before) is held (`drawn_hold`); told again
--     by a head that reserved anew, it takes its new `last` and `planned`.
--     Not from a maker of another epoch (`epoch`, the head's as it
--     answered). Returns {'ok'}.
--   'hash', seed, most: at most `most` pre-queued users given their draw
--     keys. Returns {'ok', how many, how many are left to hash}.
--   'reopen', opens at, pre-queue window, settings version (the head's
--     as read): the head holds no opening due;
--     a sub-line closing goes back to its pre-queue, with the head's
--     opening. Returns {'ok'}.
--   'pool', most, seed: the highest drawn ticket placed here, and the
--     lowest `most` draw keys, anyone still pre-queued given a key first:
--     {'ok', top, user, key, ...}.
--   'place', through, user, ticket, ...: those still drawn put in line at
--     their tickets, and the step's last ticket (`through`, over every
--     sub-line) recorded as placed here (prelude's `drawn_hold`). Returns
--     {'ok', how many are left to draw}.
--   'reach', through: a step numbers drawn users past the reservation
--     (from the sequence), up to `through`: held up to there too
--     (`drawn_hold`), before any sub-line places it. Returns {'ok'}.
--   'done': the draw is over here unless someone is left to draw.
--     Returns {'ok', 1 if it is over here}.
-- Or {'no_queue'}; OPENING for a step of the draw on a sub-line still
-- closing.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
local step = ARGV[2]

-- Raises a ticket field of the config to `ticket` (a number, or nil for
-- none): the draw's marks only ever move up, whatever order calls come in.
local function raise(field, ticket)
  if ticket and ticket > (tonumber(redis.call('HGET', K_CONFIG, field)) or 0) then
    redis.call('HSET', K_CONFIG, field, string.format('%d', ticket))
  end
end

-- The draw works on a sub-line told the reservation only: one still
-- closing, or not closed (made again empty since the opening), waits for
-- the opening to be made over it (opening.rs, `open`).
if (cfg.draw == 'closing' or cfg.draw == 'none') and step ~= 'close' and step ~= 'open'
    and step ~= 'reopen' then
  error({ err = 'OPENING the queue opens now' })
end

if step == 'close' then
  local untold = 0
  if cfg.draw == 'none' or cfg.draw == 'closing' then
    untold = 1
  end
  if cfg.draw == 'none' then
    redis.call('HSET', K_CONFIG, 'draw', 'closing')
    close_block(cfg)
  end
  return { 'ok', redis.call('ZCARD', K_PREQUEUE) + redis.call('ZCARD', K_POOL), untold }
end

if step == 'reopen' then
  -- The head holds no opening due: a copy of one since moved, or a
  -- closing begun for a queue deleted and made again, is undone.
  if cfg.draw == 'closing' then
    redis.call('HSET', K_CONFIG, 'draw', 'none')
  end
  -- Not over a copy newer than the head's read (a move copied since).
  if (tonumber(redis.call('HGET', K_CONFIG, 'settings_version')) or 0) <= tonumber(ARGV[5]) then
    redis.call('HSET', K_CONFIG, 'opens_at_ms', ARGV[3], 'prequeue_window_ms', ARGV[4])
  end
  return { 'ok' }
end

if step == 'open' then
  -- Not from a maker of another epoch (the queue deleted and made again
  -- since it read the head), whose reservation is not this queue's.
  if ARGV[6] and tonumber(ARGV[6]) ~= cfg.epoch then
    return { 'ok' }
  end
  if cfg.draw == 'closing' then
    redis.call('HSET', K_CONFIG, 'draw', ARGV[3], 'draw_end', ARGV[4])
    raise('drawn_through', tonumber(ARGV[5]))
    if ARGV[3] == 'frozen' then
      note_joined(tonumber(ARGV[4]))
    end
  elseif cfg.draw == 'frozen' and ARGV[3] == 'frozen' and tonumber(ARGV[4]) > cfg.draw_end then
    -- A head made again mid-draw reserves anew, above its sequence: the
    -- steps it plans number from above `planned` up to its new last, held
    -- here, and no block at or below that last is installed.
    redis.call('HSET', K_CONFIG, 'draw_end', ARGV[4])
    raise('drawn_through', tonumber(ARGV[5]))
  end
  return { 'ok' }
end

if step == 'hash' then
  if cfg.draw ~= 'frozen' then
    return { 'ok', 0, 0 }
  end
  local hashed = draw_keys(ARGV[3], tonumber(ARGV[4]))
  return { 'ok', hashed, redis.call('ZCARD', K_PREQUEUE) }
end

if step == 'pool' then
  -- Anyone still pre-queued here (a sub-line closed after the keys were
  -- given) is given a key first: nobody told the reservation is left out.
  if cfg.draw == 'frozen' then
    draw_keys(ARGV[4], redis.call('ZCARD', K_PREQUEUE))
  end
  -- Also the last step's last ticket: a step may number someone who
  -- left before it placed them, and no later plan gives that ticket.
  local top = math.max(tonumber(redis.call('HGET', K_CONFIG, 'drawn_top')) or 0,
    tonumber(redis.call('HGET', K_CONFIG, 'drawn_through')) or 0)
  local out = { 'ok', string.format('%d', top) }
  local lowest = redis.call('ZRANGE', K_POOL, 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')
  for i = 1, #lowest, 2 do
    out[#out + 1] = lowest[i]
    out[#out + 1] = string.format('%d', tonumber(lowest[i + 1]))
  end
  return out
end

if step == 'place' then
  -- A user who left since the plan leaves a gap in the numbers, which
  -- changes no position; one placed by an earlier try is not drawn now.
  local joined, top = {}, tonumber(redis.call('HGET', K_CONFIG, 'drawn_top')) or 0
  raise('drawn_through', tonumber(ARGV[3]))
  for i = 4, #ARGV, 2 do
    if redis.call('ZREM', K_POOL, ARGV[i]) == 1 then
      joined[#joined + 1] = { ARGV[i], tonumber(ARGV[i + 1]) }
      top = math.max(top, tonumber(ARGV[i + 1]))
    end
  end
  add_waiting_many(joined)
  if #joined > 0 then
    redis.call('HSET', K_CONFIG, 'drawn_top', string.format('%d', top))
  end
  return { 'ok', redis.call('ZCARD', K_POOL) + redis.call('ZCARD', K_PREQUEUE) }
end

if step == 'reach' then
  raise('drawn_end', tonumber(ARGV[3]))
  return { 'ok' }
end

if step == 'done' then
  if cfg.draw == 'frozen' and redis.call('ZCARD', K_POOL) + redis.call('ZCARD', K_PREQUEUE) == 0 then
    redis.call('HSET', K_CONFIG, 'draw', 'done')
    cfg.draw = 'done'
  end
  return { 'ok', cfg.draw == 'done' and 1 or 0 }
end

return redis.error_reply('draw_sub_line: unknown step ' .. tostring(step))
