-- Line changes: the changes to the waiting set after a sequence number,
-- and the queue's summary after them (see domain/line.rs). One call per
-- queue and refresh, however many users the caller watches.
-- KEYS: the queue's keys (prelude). ARGV: now, after, limit.
-- Returns {'ok', seq, complete (1/0), mode, waiting, pre-queued, opens_at,
-- draw, rate count, rate span, epoch, heartbeat timeout, notice, closed
-- reason, recent admissions, abandonments, configured rate, the drawn
-- tickets held (above, through: prelude's `drawn_hold`), entry...} where
-- the epoch is the
-- queue's creation time (a queue created again starts a new log) and each
-- entry is
-- 'seq|j|ticket|user', 'seq|J|first ticket|count' (a run of newcomers,
-- domain::LineEvent::JoinedRun), 'seq|l|ticket|admitted' or
-- 'seq|p|0|user'; or
-- {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
local seq = tonumber(redis.call('HGET', K_CONFIG, 'log_seq')) or 0
local after = tonumber(ARGV[2])
local complete = 1
if after > seq then
  complete = 0
elseif after < seq then
  local oldest = redis.call('ZRANGE', K_LOG, 0, 0, 'WITHSCORES')
  if #oldest == 0 or tonumber(oldest[2]) > after + 1 then
    complete = 0
  end
end
local count, span, recent, abandoned = rate_sample()
local to_draw = redis.call('ZCARD', K_PREQUEUE) + redis.call('ZCARD', K_POOL)
local out = { 'ok', seq, complete, cfg.mode, redis.call('ZCARD', K_WAITING), to_draw, cfg.opens_at,
  cfg.draw, count, span, cfg.epoch, cfg.heartbeat, cfg.notice, cfg.closed_reason, recent, abandoned,
  cfg.rate }
local above, through = drawn_hold(to_draw)
out[#out + 1] = above
out[#out + 1] = through
-- The caller's text, not the number: Lua writes numbers past 10^14 with an
-- exponent.
local entries = redis.call('ZRANGEBYSCORE', K_LOG, '(' .. ARGV[2], '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
for i = 1, #entries do
  out[#out + 1] = entries[i]
end
return out
