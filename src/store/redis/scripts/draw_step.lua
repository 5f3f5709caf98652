-- Draw step: one chunk of the opening draw (see domain/draw.rs). Runs in
-- chunks so a large pre-queue never holds Redis for long; any replica may
-- run the next step.
-- KEYS: the queue's keys (prelude). ARGV: now, seed, chunk.
-- The seed is taken only by the step that starts the draw.
-- Returns {'ok', 1} once the draw is complete (or there is none),
-- {'ok', 0} while it goes on, or {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
local chunk = tonumber(ARGV[3])
if cfg.draw == 'frozen' then
  cfg.draw = 'hashing'
  redis.call('HSET', K_CONFIG, 'draw', 'hashing', 'draw_seed', ARGV[2])
end
if cfg.draw == 'hashing' then
  draw_keys(redis.call('HGET', K_CONFIG, 'draw_seed'), chunk)
  if redis.call('ZCARD', K_PREQUEUE) == 0 then
    redis.call('HSET', K_CONFIG, 'draw', 'assigning')
  end
elseif cfg.draw == 'assigning' then
  local popped = redis.call('ZPOPMIN', K_POOL, chunk)
  local next_ticket = tonumber(redis.call('HGET', K_CONFIG, 'draw_next'))
  local joined = {}
  for i = 1, #popped, 2 do
    joined[#joined + 1] = { popped[i], next_ticket }
    next_ticket = next_ticket + 1
  end
  add_waiting_many(joined)
  redis.call('HSET', K_CONFIG, 'draw_next', next_ticket)
  if redis.call('ZCARD', K_POOL) == 0 then
    redis.call('HSET', K_CONFIG, 'draw', 'done')
  end
end
local state = redis.call('HGET', K_CONFIG, 'draw')
if state == 'frozen' or state == 'hashing' or state == 'assigning' then
  return { 'ok', 0 }
end
return { 'ok', 1 }
