-- Shared head of every queue script (prepended by lua.rs, after the
-- constants both sides must agree on: LOG_KEEP, the line log entries kept
-- (domain::LINE_LOG_KEEP); RATE_WINDOW_MS and RECENT_MS, the window of the
-- observed rates and its recent part; WAITED_WINDOW_MS, WAITED_SLOT_MS and
-- WAITED_BOUNDS_S, how times waited are counted (domain/estimate.rs)).
--
-- KEYS[1..16]: the queue's keys, as listed in keys.rs: config, seq, waiting,
--              active, admitted, stats, rate, batches, batch_expiry,
--              prequeue, pool, seen, log, cleared, flow, joined. A
--              script's own keys follow, from KEYS[OWN].
-- ARGV[1]:     the caller's clock, milliseconds since the Unix epoch.
--              Scripts never read Redis's clock, so every replica and the
--              memory store agree on what "now" means.
--
-- Every script answers {'ok', ...} or {status} with the reason it did not
-- act ('no_queue', 'closed', 'paused', 'opening_passed', 'exists'), read by
-- one function (reply.rs).
--
-- Every script mirrors a method of the memory store (store/memory/mod.rs),
-- and the helpers here mirror its helpers of the same names; keep the two
-- in step.

local K_CONFIG, K_SEQ, K_WAITING, K_ACTIVE, K_ADMITTED, K_STATS, K_RATE, K_BATCHES, K_BATCH_EXPIRY =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local K_PREQUEUE, K_POOL, K_SEEN, K_LOG, K_CLEARED, K_FLOW, K_JOINED =
  KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16]
local OWN = 17
local NOW = tonumber(ARGV[1])
local SECOND = math.floor(NOW / 1000)
local FLOW_SLOT = math.floor(NOW / FLOW_SLOT_MS)

-- A queue over several sub-lines keeps its line in the sub-lines' slots,
-- each with its own copy of the config (`sub_line` set), and only its
-- head in the queue's own slot. A script written for one slot must never
-- act on such a head's empty line, so meeting one is an error reply,
-- whatever the script: the store then routes the call to the sub-lines or
-- says the call is not served over them (reply.rs).
-- The name Redis gives the history of its dataset (`master_replid`): new
-- on every promotion of a replica and on every restart that does not
-- carry on its predecessor's data (see `same_history`).
-- A plain find of the field first: a pattern tried at every place of
-- the section cost about 3 µs of each call that checks.
local function history_now()
  local info = redis.call('INFO', 'replication')
  local at = string.find(info, 'master_replid:', 1, true)
  return at and string.match(info, '^%w+', at + 14)
end

local function load_config()
  local v = redis.call('HMGET', K_CONFIG, 'mode', 'max_active', 'admission_ttl_ms', 'created_at_ms',
    'admit_per_second', 'opens_at_ms', 'prequeue_window_ms', 'draw', 'heartbeat_timeout_ms',
    'presence_since_ms', 'notice', 'closed_reason', 'flow_pruned_s', 'shards', 'sub_line',
    'block_first', 'block_next', 'block_end', 'block_ms', 'draw_end', 'sub_line_history')
  if not v[1] then
    return nil
  end
  local sub_line = tonumber(v[15])
  if (tonumber(v[14]) or 1) > 1 and not sub_line then
    error({ err = 'SUBLINES the queue is kept over ' .. v[14] .. ' sub-lines' })
  end
  -- A sub-line in another history than it last checked (a failover to a
  -- replica that lacked its last writes, a restart from an older copy:
  -- prelude's `same_history`) may have lost pops the head settled, and
  -- have their users waiting again; nothing is done on it until the store
  -- has taken them again (sub_line_resync.lua).
  if sub_line then
    if v[21] ~= history_now() then
      error({ err = 'RESYNC the sub-line is in a new history' })
    end
  end
  return { mode = v[1], max_active = tonumber(v[2]), ttl = tonumber(v[3]), epoch = tonumber(v[4]),
    rate = tonumber(v[5]), opens_at = tonumber(v[6]) or 0, window = tonumber(v[7]) or 0,
    draw = v[8] or 'none', heartbeat = tonumber(v[9]), presence_since = tonumber(v[10]) or 0,
    notice = v[11] or '', closed_reason = v[12] or '', flow_pruned = tonumber(v[13]) or 0,
    sub_line = sub_line, block_first = tonumber(v[16]), block_next = tonumber(v[17]) or 0,
    block_end = tonumber(v[18]) or 0, block_ms = tonumber(v[19]) or 0, draw_end = tonumber(v[20]) or 0 }
end

-- The history of a queue's head: a failover to a replica that lacked the
-- last leases, or a restart from an older copy, rolls the head's sequence
-- back below blocks the sub-lines (other slots, other nodes) still hold;
-- the next leases would give their tickets again, and the watermark would
-- stop short of tickets already given. Redis names each history
-- (`master_replid`, new on every promotion and on every restart that does
-- not carry on its predecessor's data). The head keeps the history it last
-- checked its sequence in; a head script that reads the sequence in
-- another answers 'resync' until a lease has brought the sequence above
-- every sub-line's block (lease.lua). Returns whether the history is the
-- same, and the history now.
local function same_history()
  local history = history_now()
  return redis.call('HGET', K_CONFIG, 'head_history') == history, history
end

-- A head's lease, and a give-back of it (give_back.lua), name the head's
-- history with the queue's epoch: a queue made again under its name is
-- another.
local function lease_era(history)
  return history .. '@' .. (redis.call('HGET', K_CONFIG, 'created_at_ms') or '')
end

-- The head's ticket sequence, read as a bound told to others (a floor
-- the sub-lines are told, the top of a sub-line made again): recorded as
-- `seq_floor`, below which a block given back never takes the sequence
-- (give_back.lua).
local function told_seq()
  local seq = tonumber(redis.call('GET', K_SEQ)) or 0
  if seq > (tonumber(redis.call('HGET', K_CONFIG, 'seq_floor')) or 0) then
    redis.call('HSET', K_CONFIG, 'seq_floor', seq)
  end
  return seq
end

-- A sub-line's tickets come from the block it leased from the head
-- (domain::shards): open while it has tickets left and less than TAU_MS
-- after its lease. A join that finds it closed is answered 'lease'.
local function block_open(cfg)
  return cfg.block_next < cfg.block_end and NOW < cfg.block_ms + TAU_MS
end

-- Installs a block leased from the head (lease.lua) for this sub-line,
-- unless it already holds a later one (another replica's lease that came
-- first), or a place given back raised its first ticket above the lease's
-- (restore_sub_line.lua, 'close'): a block never installed is a gap in the
-- numbers, which changes no position. Nor a block the head leased for
-- another epoch of the queue (`epoch`, the head's `created_at_ms` as
-- lease.lua answered it): a lease in flight while the queue was deleted
-- and made again under its name numbers from the old sequence, whose
-- tickets the new head would give again. Returns whether it was installed.
local function install_block(cfg, first, block_end, leased_at, epoch)
  if epoch ~= cfg.epoch or (cfg.block_first and cfg.block_first >= first) then
    return false
  end
  -- Nor a block leased before a scheduled opening's reservation (one in
  -- flight while the pre-queue closed): nobody who joins after the
  -- opening may stand ahead of someone drawn.
  if cfg.draw == 'closing' or first <= cfg.draw_end then
    return false
  end
  redis.call('HSET', K_CONFIG, 'block_first', first, 'block_next', first, 'block_end', block_end,
    'block_ms', leased_at)
  cfg.block_first, cfg.block_next, cfg.block_end, cfg.block_ms = first, first, block_end, leased_at
  return true
end

-- Closes the sub-line's block (domain::shards::SubLines::close_blocks), as
-- a place given back does: it gives no ticket from then on, and its next
-- lease is as after none (a lease time of -1 says so). It keeps its first
-- ticket, so a lease older than it is still not installed, and ends at the
-- first ticket it did not give, so a resync (lease.lua) counts every
-- ticket it gave.
local CLOSED = -1
local function close_block(cfg)
  if cfg.block_first then
    redis.call('HSET', K_CONFIG, 'block_end', cfg.block_next, 'block_ms', CLOSED)
    cfg.block_end, cfg.block_ms = cfg.block_next, CLOSED
  end
end

-- Takes the block's next ticket, counting those the call gave; the caller
-- checked it is open and saves the block (save_block) before the script
-- ends.
local function take_block_ticket(cfg)
  local ticket = cfg.block_next
  cfg.block_next = ticket + 1
  cfg.given = (cfg.given or 0) + 1
  return ticket
end

local function save_block(cfg)
  redis.call('HSET', K_CONFIG, 'block_next', cfg.block_next)
end

-- The size of the next block (domain::shards::next_block_size), for a
-- call with `wanted` users still to serve: twice what the last one gave,
-- twice its size when used up, as much as `wanted` up to twice that,
-- within 1 and MAX_BLOCK.
local function next_block_size(cfg, wanted)
  local grown
  if not cfg.block_first or cfg.block_ms == CLOSED then
    grown = 1
  elseif cfg.block_next >= cfg.block_end then
    grown = 2 * (cfg.block_end - cfg.block_first)
  else
    grown = math.max(1, 2 * (cfg.block_next - cfg.block_first))
  end
  return math.min(math.max(grown, math.min(wanted, 2 * grown)), MAX_BLOCK)
end

-- A sub-line's draw is 'closing' from when its pre-queue is frozen until
-- the head has reserved the drawn tickets, then 'frozen' until the draw
-- is done (opening.rs, `open`).
local function drawing(cfg)
  return cfg.draw == 'frozen' or cfg.draw == 'hashing' or cfg.draw == 'assigning'
    or cfg.draw == 'closing'
end

-- The drawn tickets this sub-line cannot vouch are placed on every
-- sub-line (domain::DrawHold): while it draws and still holds someone to
-- draw (`to_draw`, pre-queued or in its pool), those above the last ticket
-- of the last step it placed, up to the reservation's last (or the last
-- a step past it numbers: draw_sub_line.lua, 'reach'). A step is
-- told to every sub-line, and the next planned only once all placed it;
-- a sub-line with nobody left to draw misses no ticket below anyone's.
-- {above, through}; {0, 0} holds nothing (one slot places a step in one
-- call). Its own read, not load_config's, and only then: count_below.lua
-- reads it with every batch's positions.
local function drawn_hold(to_draw)
  if to_draw == 0 then
    return 0, 0
  end
  local v = redis.call('HMGET', K_CONFIG, 'sub_line', 'draw', 'drawn_through', 'draw_end',
    'drawn_end')
  if not v[1] or v[2] ~= 'frozen' then
    return 0, 0
  end
  -- Past the reservation as far as a step told to reach it.
  return tonumber(v[3]) or 0, math.max(tonumber(v[4]) or 0, tonumber(v[5]) or 0)
end

-- HDEL/ZREM of many members, in slices: unpack() is limited by Lua's C stack.
local function remove_all(command, key, members)
  for i = 1, #members, 1000 do
    redis.call(command, key, unpack(members, i, math.min(i + 999, #members)))
  end
end

-- The rate sample, cached within one script run (see rate_sample).
local rate_count, rate_span, rate_recent, rate_abandoned

local function first_rate_bucket()
  return math.floor(math.max(NOW - RATE_WINDOW_MS, 0) / 1000) + 1
end

-- The first slot of FLOW_SLOT_MS in the window (domain::first_flow_slot).
local function first_flow_slot()
  return math.floor(math.max(NOW - RATE_WINDOW_MS, 0) / FLOW_SLOT_MS) + 1
end

-- The flow hash's buckets older than their windows are dropped every ten
-- seconds, not on every write: readers count only what is in the window.
local function prune_flow(cfg)
  if SECOND < cfg.flow_pruned + 10 then
    return
  end
  local first = first_flow_slot()
  local oldest_slot = math.floor(NOW / WAITED_SLOT_MS) - (WAITED_WINDOW_MS / WAITED_SLOT_MS - 1)
  local stale = {}
  for _, field in ipairs(redis.call('HKEYS', K_FLOW)) do
    local kind, at = string.match(field, '^(%a):(%d+)')
    if (kind == 'w' and tonumber(at) < oldest_slot) or (kind ~= 'w' and tonumber(at) < first) then
      stale[#stale + 1] = field
    end
  end
  remove_all('HDEL', K_FLOW, stale)
  cfg.flow_pruned = SECOND
  redis.call('HSET', K_CONFIG, 'flow_pruned_s', SECOND)
end

-- Counts n users joining now (the memory store's count_arrivals).
local function count_arrivals(cfg, n)
  redis.call('HINCRBY', K_STATS, 'enqueued', n)
  redis.call('HINCRBY', K_FLOW, 'j:' .. FLOW_SLOT, n)
  prune_flow(cfg)
end

local function count_abandons(cfg, n)
  if n > 0 then
    redis.call('HINCRBY', K_STATS, 'abandoned', n)
    redis.call('HINCRBY', K_FLOW, 'x:' .. FLOW_SLOT, n)
    prune_flow(cfg)
    rate_count = nil
  end
end

-- The last ticket this run gave, if any: the script then calls note_joined.
local gave_tickets = false

-- Records that the tickets up to `last` (the last given) were given by
-- this second; only ever raised (GT), as a caller whose clock is behind may
-- write last.
local function note_joined(last)
  redis.call('ZADD', K_JOINED, 'GT', last, SECOND)
end

-- Counts how long the users of `tickets` (ascending, admitted from the line
-- now) waited, and forgets when tickets up to the last were given.
local function count_waited(cfg, tickets)
  local n = #tickets
  if n == 0 then
    return
  end
  local marks = redis.call('ZRANGEBYSCORE', K_JOINED, tickets[1], '+inf', 'WITHSCORES', 'LIMIT', 0, n)
  local slot = math.floor(NOW / WAITED_SLOT_MS)
  local counts, m = {}, 1
  for _, ticket in ipairs(tickets) do
    while m <= #marks and tonumber(marks[m + 1]) < ticket do
      m = m + 2
    end
    if m > #marks then
      break
    end
    local waited = math.floor(math.max(NOW - tonumber(marks[m]) * 1000, 0) / 1000)
    local bucket = #WAITED_BOUNDS_S - 1
    for i, bound in ipairs(WAITED_BOUNDS_S) do
      if waited <= bound then
        bucket = i - 1
        break
      end
    end
    counts[bucket] = (counts[bucket] or 0) + 1
  end
  for bucket, count in pairs(counts) do
    redis.call('HINCRBY', K_FLOW, 'w:' .. slot .. ':' .. bucket, count)
  end
  redis.call('ZREMRANGEBYSCORE', K_JOINED, '-inf', '(' .. tickets[n])
  prune_flow(cfg)
end

-- At the opening, freeze the pre-queue and reserve its tickets. Only a
-- queue with an opening ever has a pre-queue.
local function open_if_due(cfg)
  if cfg.draw ~= 'none' or cfg.opens_at == 0 or NOW < cfg.opens_at then
    return
  end
  local size = redis.call('ZCARD', K_PREQUEUE)
  local next_ticket = (tonumber(redis.call('GET', K_SEQ)) or 0) + 1
  local last = redis.call('INCRBY', K_SEQ, size)
  if size > 0 then
    note_joined(last)
  end
  cfg.draw = size == 0 and 'done' or 'frozen'
  redis.call('HSET', K_CONFIG, 'draw', cfg.draw, 'draw_next', next_ticket)
end

-- A head's part of the same rule: a head script that reserves, admits or
-- draws leaves a scheduled opening due and not made, or under way, to the
-- store first (draw_head.lua, 'close' to 'opened'). Takes the head's
-- `draw` and `opens_at_ms` fields as the script read them.
local function open_head_first(draw, opens_at)
  draw, opens_at = draw or 'none', tonumber(opens_at) or 0
  if draw == 'closing' or draw == 'opening'
      or (draw == 'none' and opens_at > 0 and NOW >= opens_at) then
    error({ err = 'OPENING the queue opens now' })
  end
end

-- The opening draw's keys (domain/draw.rs): at most `most` pre-queued
-- users, by arrival, moved to the pool under their keys for `seed`;
-- how many.
local function draw_keys(seed, most)
  if most <= 0 then
    return 0
  end
  local popped = redis.call('ZPOPMIN', K_PREQUEUE, most)
  local keyed = {}
  for i = 1, #popped, 2 do
    local user = popped[i]
    -- 13 hex digits: 52 bits, exact as a sorted-set score.
    keyed[#keyed + 1] = tonumber(string.sub(redis.sha1hex(seed .. user), 1, 13), 16)
    keyed[#keyed + 1] = user
  end
  for first = 1, #keyed, 1000 do
    redis.call('ZADD', K_POOL, unpack(keyed, first, math.min(first + 999, #keyed)))
  end
  return #popped / 2
end

-- What every operation does first: end the admissions whose time is up, and
-- open the queue if its opening is due.
local function prepare(cfg)
  -- A queue over sub-lines opens as one: a sub-line whose opening is due,
  -- or under way, leaves it to the store (opening.rs, `open`), which
  -- freezes every sub-line's pre-queue before the head reserves the
  -- drawn tickets, and then calls again.
  if cfg.sub_line and (cfg.draw == 'closing'
      or (cfg.draw == 'none' and cfg.opens_at > 0 and NOW >= cfg.opens_at)) then
    error({ err = 'OPENING the queue opens now' })
  end
  local gone = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', NOW)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', K_ACTIVE, '-inf', NOW)
    remove_all('HDEL', K_ADMITTED, gone)
    redis.call('HINCRBY', K_STATS, 'expired', #gone)
  end
  open_if_due(cfg)
end

-- Logs changes to the line (see domain/line.rs), in order, each entry
-- {kind, ticket, detail}: a ticket joined ('j', with the user), a run of
-- newcomers joined ('J', the first ticket and the count), a ticket left
-- ('l', with 1 when admitted), or a pre-queued user left ('p', with the
-- user). One sequence increment and one ZADD per slice for all of them;
-- keeps the last LOG_KEEP.
local function log_events(entries)
  local n = #entries
  if n == 0 then
    return
  end
  local last = redis.call('HINCRBY', K_CONFIG, 'log_seq', n)
  for first = 1, n, 500 do
    local args = {}
    for i = first, math.min(first + 499, n) do
      local seq, entry = last - n + i, entries[i]
      args[#args + 1] = seq
      -- In full: a sub-line made again numbers its log past 10^14, which
      -- Lua would write as an exponent (sub_lines.rs, `LOG_SEQ_PER_MS`).
      args[#args + 1] = string.format('%d', seq) .. '|' .. entry[1] .. '|' .. entry[2] .. '|' .. entry[3]
    end
    redis.call('ZADD', K_LOG, unpack(args))
  end
  if last > LOG_KEEP then
    redis.call('ZREMRANGEBYSCORE', K_LOG, '-inf', last - LOG_KEEP)
  end
end

local function log_event(kind, ticket, detail)
  log_events({ { kind, ticket, detail } })
end

-- Puts users in line, each {user, ticket}, and logs their joining.
local function add_waiting_many(joined)
  local entries = {}
  for first = 1, #joined, 500 do
    local args = {}
    for i = first, math.min(first + 499, #joined) do
      local user, ticket = joined[i][1], joined[i][2]
      args[#args + 1] = ticket
      args[#args + 1] = user
      entries[i] = { 'j', ticket, user }
    end
    redis.call('ZADD', K_WAITING, unpack(args))
  end
  log_events(entries)
end

local function add_waiting(user, ticket)
  add_waiting_many({ { user, ticket } })
end

-- Everyone in line is waiting: the queue has no opening, or its draw is
-- over (the pre-queue and the draw's pool are then empty for good).
local function only_waiting(cfg)
  return cfg.opens_at == 0 or cfg.draw == 'done'
end

-- A script that knows the line's length may keep it here, read once, as
-- long as it keeps it exact (or sets it back to nil).
local line_length

local function in_line(cfg)
  if line_length then
    return line_length
  end
  if only_waiting(cfg) then
    return redis.call('ZCARD', K_WAITING)
  end
  return redis.call('ZCARD', K_WAITING) + redis.call('ZCARD', K_PREQUEUE) + redis.call('ZCARD', K_POOL)
end

-- A sign of life. GT: a caller whose clock is behind another's never moves
-- a newer sign back (it still adds a user not yet seen).
local function see(user)
  redis.call('ZADD', K_SEEN, 'GT', NOW, user)
end

-- The rate's token bucket, in milli-tokens so both stores count exactly: it
-- refills at admit_per_second tokens a second, holds at most one second's
-- worth, and starts full. It lives in the stats hash. Takes up to `wanted`
-- whole tokens and returns how many it took. A caller whose clock is behind
-- the last refill refills nothing.
local function take_tokens(cfg, wanted)
  local capacity = cfg.rate * 1000
  local v = redis.call('HMGET', K_STATS, 'bucket_milli', 'bucket_ms')
  local tokens, stamp = tonumber(v[1]), tonumber(v[2])
  if not tokens then
    tokens, stamp = capacity, NOW
  end
  if NOW > stamp then
    tokens = math.min(capacity, tokens + (NOW - stamp) * cfg.rate)
    stamp = NOW
  end
  tokens = math.min(tokens, capacity)
  local taken = math.min(wanted, math.floor(tokens / 1000))
  tokens = tokens - taken * 1000
  redis.call('HSET', K_STATS, 'bucket_milli', tokens, 'bucket_ms', stamp)
  return taken
end

-- Slots free under max_active (a large number when there is no cap).
local function free_slots(cfg)
  if cfg.max_active == 0 then
    return 1e15
  end
  return math.max(cfg.max_active - redis.call('ZCARD', K_ACTIVE), 0)
end

-- A kind of the flow hash's slots summed over the window, up to now's slot
-- (the memory store's in_window): a handful of fields.
local function in_window(kind)
  local fields = {}
  for slot = first_flow_slot(), FLOW_SLOT do
    fields[#fields + 1] = kind .. ':' .. slot
  end
  if #fields == 0 then
    return 0
  end
  local sum = 0
  for _, v in ipairs(redis.call('HMGET', K_FLOW, unpack(fields))) do
    sum = sum + (tonumber(v) or 0)
  end
  return sum
end

-- Admissions in the window and the span they cover, those of the recent
-- part, and abandonments in the window (see domain/estimate.rs). Cached
-- within one script run; admissions and abandonments clear the cache.
local function rate_sample()
  if rate_count then
    return rate_count, rate_span, rate_recent, rate_abandoned
  end
  local first = first_rate_bucket()
  local first_recent = math.floor(math.max(NOW - RECENT_MS, 0) / 1000) + 1
  local flat = redis.call('HGETALL', K_RATE)
  local count, recent, oldest = 0, 0, nil
  for i = 1, #flat, 2 do
    local bucket = tonumber(flat[i])
    if bucket >= first then
      count = count + tonumber(flat[i + 1])
      if not oldest or bucket < oldest then
        oldest = bucket
      end
    end
    if bucket >= first_recent then
      recent = recent + tonumber(flat[i + 1])
    end
  end
  if oldest then
    -- A caller whose clock is behind the newest admission sees a span of 0,
    -- never a negative one.
    rate_count, rate_span = count, math.max(NOW - math.max(oldest * 1000, NOW - RATE_WINDOW_MS, 0), 0)
  else
    rate_count, rate_span = 0, 0
  end
  rate_recent, rate_abandoned = recent, in_window('x')
  return rate_count, rate_span, rate_recent, rate_abandoned
end

-- Counts n admissions made at NOW and drops buckets that left the window.
local function record_admissions(n)
  if n == 0 then
    return
  end
  redis.call('HINCRBY', K_STATS, 'admitted', n)
  redis.call('HINCRBY', K_RATE, math.floor(NOW / 1000), n)
  local first = first_rate_bucket()
  for _, bucket in ipairs(redis.call('HKEYS', K_RATE)) do
    if tonumber(bucket) < first then
      redis.call('HDEL', K_RATE, bucket)
    end
  end
  rate_count = nil
end

-- Gives a user a slot until NOW + ttl; returns the expiry. The caller has
-- taken the user out of the line and calls record_admissions.
local function admit_user(cfg, user, ticket)
  local expires = NOW + cfg.ttl
  redis.call('ZREM', K_SEEN, user)
  redis.call('ZADD', K_ACTIVE, expires, user)
  redis.call('HSET', K_ADMITTED, user, ticket .. ':' .. NOW .. ':' .. expires)
  return expires
end

-- Admits the users of `taken` (user, ticket, ...: lowest first, already
-- out of the waiting set) and logs their leaving the line; appends user,
-- ticket, admitted at, expires at, ... to `out`. Returns their tickets.
local function admit_taken(cfg, taken, out)
  local left, tickets = {}, {}
  for i = 1, #taken, 2 do
    local user, ticket = taken[i], tonumber(taken[i + 1])
    left[#left + 1] = { 'l', ticket, 1 }
    tickets[#tickets + 1] = ticket
    local expires = admit_user(cfg, user, ticket)
    out[#out + 1] = user
    out[#out + 1] = ticket
    out[#out + 1] = NOW
    out[#out + 1] = expires
  end
  log_events(left)
  return tickets
end

-- Admits up to `room` waiting users, lowest tickets first; returns the flat
-- list user, ticket, admitted at, expires at, ... appended to `out`.
local function admit_next(cfg, room, out)
  if room <= 0 then
    return out
  end
  local tickets = admit_taken(cfg, redis.call('ZPOPMIN', K_WAITING, room), out)
  record_admissions(#tickets)
  count_waited(cfg, tickets)
  return out
end

-- Takes a user out of the line wherever they stand in it; true if they were.
local function remove_from_line(cfg, user)
  local ticket = redis.call('ZSCORE', K_WAITING, user)
  if ticket then
    redis.call('ZREM', K_WAITING, user)
    log_event('l', tonumber(ticket), 0)
  end
  local prequeued = not ticket and not only_waiting(cfg)
    and (redis.call('ZREM', K_PREQUEUE, user) == 1 or redis.call('ZREM', K_POOL, user) == 1)
  if prequeued then
    log_event('p', 0, user)
  end
  local removed = ticket or prequeued
  if removed then
    redis.call('ZREM', K_SEEN, user)
  end
  return removed
end

-- Drops the results kept for retries (AdmitBatch, AdmitUsers, the entries
-- of an admission over sub-lines) whose time has passed.
local function forget_lapsed_results()
  local lapsed = redis.call('ZRANGEBYSCORE', K_BATCH_EXPIRY, '-inf', NOW)
  remove_all('HDEL', K_BATCHES, lapsed)
  redis.call('ZREMRANGEBYSCORE', K_BATCH_EXPIRY, '-inf', NOW)
end

-- The result kept under `key`, decoded, once lapsed results are dropped;
-- nil when there is none.
local function kept_result(key)
  forget_lapsed_results()
  local kept = redis.call('HGET', K_BATCHES, key)
  return kept and cjson.decode(kept)
end

-- A change of settings: reopening, or a shorter heartbeat timeout, makes
-- presence count from now, so nobody is released for silence the old
-- rules allowed (instances learn the new timeout within a refresh and
-- record presence by it); reopened, a line cleared before starts afresh
-- (UNLINK frees a large set without holding Redis). `mode` and
-- `heartbeat_ms` are the new ones, nil when unchanged.
local function restart_presence(cfg, mode, heartbeat_ms)
  local reopened = cfg.mode == 'closed' and mode and mode ~= 'closed'
  local shortened = heartbeat_ms and tonumber(heartbeat_ms) < cfg.heartbeat
  if reopened or shortened then
    redis.call('HSET', K_CONFIG, 'presence_since_ms', NOW)
  end
  if reopened then
    redis.call('UNLINK', K_CLEARED)
  end
end

-- Keeps a result for retries under `key` for `keep_ms`.
local function keep_result(key, result, keep_ms)
  redis.call('HSET', K_BATCHES, key, cjson.encode(result))
  redis.call('ZADD', K_BATCH_EXPIRY, NOW + tonumber(keep_ms), key)
end

-- A user admitted by name leaves the line with their ticket if waiting;
-- returns it, or nil for anyone else (who needs a ticket of their own).
local function leave_line_admitted(user)
  local ticket = redis.call('ZSCORE', K_WAITING, user)
  if not ticket then
    return nil
  end
  redis.call('ZREM', K_WAITING, user)
  log_event('l', tonumber(ticket), 1)
  return tonumber(ticket)
end

-- Ends a user's admission; true if there was one.
local function end_admission(user)
  if redis.call('HDEL', K_ADMITTED, user) == 1 then
    redis.call('ZREM', K_ACTIVE, user)
    return true
  end
  return false
end

-- A place as returned to the store: kind, ticket, in line, position,
-- admitted at, expires at, queue epoch, mode, rate count, rate span,
-- opens in, notice, closed reason (empty for none), recent admissions,
-- abandonments, configured rate.
local function place(cfg, kind, ticket, position, admitted_at, expires_at, opens_in)
  local count, span, recent, abandoned = rate_sample()
  return { kind, ticket, in_line(cfg), position, admitted_at, expires_at, cfg.epoch, cfg.mode, count,
    span, opens_in or 0, cfg.notice, cfg.closed_reason, recent, abandoned, cfg.rate }
end

local function admitted_place(cfg, record)
  local ticket, admitted_at, expires_at = string.match(record, '^(%d+):(%d+):(%d+)$')
  return place(cfg, 'admitted', tonumber(ticket), 0, tonumber(admitted_at), tonumber(expires_at))
end

local function prequeue_place(cfg)
  local opens_in = 0
  if cfg.draw == 'none' and cfg.opens_at > 0 then
    opens_in = math.max(cfg.opens_at - NOW, 0)
  end
  return place(cfg, 'pre_queue', 0, 0, 0, 0, opens_in)
end

-- The place of a user; in pass-through mode a waiting user is admitted on
-- the spot (unless the opening draw is still placing people). {'none'} when
-- neither in line nor admitted.
local function current_place(cfg, user, not_admitted)
  if not not_admitted then
    local record = redis.call('HGET', K_ADMITTED, user)
    if record then
      return admitted_place(cfg, record)
    end
  end
  if not only_waiting(cfg)
      and (redis.call('ZSCORE', K_PREQUEUE, user) or redis.call('ZSCORE', K_POOL, user)) then
    return prequeue_place(cfg)
  end
  local score = redis.call('ZSCORE', K_WAITING, user)
  if not score then
    -- Cleared from the line of a queue still closed: told so, as those
    -- waiting are.
    if cfg.mode == 'closed' and redis.call('SISMEMBER', K_CLEARED, user) == 1 then
      return place(cfg, 'closed', 0, 0, 0, 0)
    end
    return { 'none' }
  end
  local ticket = tonumber(score)
  if cfg.mode == 'pass_through' and not drawing(cfg) then
    redis.call('ZREM', K_WAITING, user)
    log_event('l', ticket, 1)
    local expires = admit_user(cfg, user, ticket)
    record_admissions(1)
    return place(cfg, 'admitted', ticket, 0, NOW, expires)
  elseif cfg.mode == 'closed' then
    return place(cfg, 'closed', ticket, 0, 0, 0)
  end
  return place(cfg, 'waiting', ticket, redis.call('ZRANK', K_WAITING, user) + 1, 0, 0)
end

-- Whether `user` holds a place in this slot: waiting, admitted,
-- pre-queued, being drawn, or cleared from a closed queue
-- (domain::restore_decision's "holds no place").
local function holds_place(user)
  return redis.call('ZSCORE', K_WAITING, user) or redis.call('HEXISTS', K_ADMITTED, user) == 1
    or redis.call('ZSCORE', K_PREQUEUE, user) or redis.call('ZSCORE', K_POOL, user)
    or redis.call('SISMEMBER', K_CLEARED, user) == 1
end

-- Whether a receipt issued at `issued` lapsed: good up to and at the
-- instant its holder, silent since, would be released (reap's cutoff is
-- strict), counting from when presence counts (domain::receipt_fresh).
local function receipt_lapsed(cfg, issued)
  local release_after = cfg.heartbeat + math.floor(cfg.heartbeat / 4)
  return math.max(issued, cfg.presence_since) + release_after < NOW
end

-- The part of domain::restore_decision that the ticket sequence decides
-- (after the lapse and ticket 0): a ticket of this queue (queue_epoch)
-- above every ticket given, or of the lost queue this one adopted at or
-- above its head, each lost place once (given_back, a set). When given
-- back, moves the sequence and the adoption as the decision says and
-- returns true.
local function restore_by_sequence(queue_epoch, epoch, ticket, head, top, given_back)
  local seq = tonumber(redis.call('GET', K_SEQ)) or 0
  local new_seq
  if epoch == queue_epoch then
    if ticket <= seq then
      return false
    end
    new_seq = ticket
  else
    local adopt = redis.call('HMGET', K_CONFIG, 'adopt_epoch_ms', 'adopt_head')
    if not adopt[1] then
      return false
    end
    local adopted, floor = tonumber(adopt[1]), math.max(tonumber(adopt[2]), head)
    if (adopted ~= 0 and adopted ~= epoch) or epoch >= queue_epoch or ticket < floor then
      return false
    end
    -- Each lost place once: whatever became of it here since stands.
    if redis.call('SADD', given_back, ticket) == 0 then
      return false
    end
    redis.call('HSET', K_CONFIG, 'adopt_epoch_ms', epoch, 'adopt_head', floor)
    new_seq = math.max(seq, top, ticket)
  end
  if new_seq ~= seq then
    redis.call('SET', K_SEQ, new_seq)
  end
  return true
end

local function is_final(p)
  return p[1] == 'admitted' or p[1] == 'closed'
end

-- This sub-line's part of a view of a line over sub-lines: everyone in line,
-- of them pre-queued or being drawn, the drawn tickets held (above,
-- through: `drawn_hold`), the rate sample, and the waiting at or below each
-- ticket of ARGV[from..to]. A position is the waiting at or below one's own
-- ticket, summed over the sub-lines.
local function line_part(from, to)
  local count, span, recent, abandoned = rate_sample()
  local prequeued = redis.call('ZCARD', K_PREQUEUE) + redis.call('ZCARD', K_POOL)
  local above, through = drawn_hold(prequeued)
  local out = { redis.call('ZCARD', K_WAITING) + prequeued, prequeued, above, through, count,
    span, recent, abandoned }
  for i = from, to do
    out[#out + 1] = redis.call('ZCOUNT', K_WAITING, '-inf', ARGV[i])
  end
  return out
end
