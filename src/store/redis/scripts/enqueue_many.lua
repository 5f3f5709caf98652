-- Enqueue many: concurrent enqueues of one queue coalesced into one call,
-- each user in turn exactly as a single enqueue would (enqueue_one.lua), so
-- Redis pays the call's fixed cost once for all of them.
-- KEYS: the queue's keys (prelude). ARGV: now, user...; on a sub-line
-- the users may follow BLOCK (a text no user id can be, for it is a
-- control character), first ticket, end, leased at, epoch: a block just
-- leased for the call, installed first (prelude.lua, `install_block`),
-- which saves the call of its own; or AHEAD (another control character),
-- first ticket, end, leased at, epoch: a block leased before the call,
-- for the first 'lease' the call would answer, installed then if its size
-- is the one that 'lease' would ask (and never otherwise: the caller then
-- gives it back, give_back.lua); and then WANTED, n: the call carries only
-- the first of n users the caller has for this sub-line (by default, the
-- call's users are all), which a block leased for them should cover. Such
-- a call that finds the block open answers {'resend'} having done
-- nothing: served alone, its user's ticket would start a run of its own,
-- where the line's log has one run of a block's consecutive tickets.
-- Before all of these, COUNT (a fourth control character), n, and n
-- tickets: a read of this sub-line's part of a view (prelude.lua,
-- `line_part`) riding on the call, made after its joins (rounds.rs).
-- Returns {'ok', answer...}, the answers in the users' order, each either
-- an answer of enqueue_one for one user, or {'joined', n, first ticket,
-- first position, epoch, mode, rate count, rate span, notice, closed reason,
-- recent admissions, abandonments, configured rate} for the next n
-- users, newcomers who joined the back of the line one after another: the
-- k-th of them (from 0) has ticket first + k and position first + k, which
-- is also the line's length they see; or {'no_queue'}. On a sub-line the
-- answers may stop early with {'lease', size}: the user after the last
-- answered needs a ticket and the block is closed, so the caller leases
-- one of that size from the head and calls again with the users not
-- answered and the block (BLOCK), installed first. On a sub-line a last answer
-- follows, {'block', first, next, end, leased at, ahead unused, given}:
-- the sub-line's block as the call left it (first 0 for none, or one
-- closed), for the caller to lease the next one ahead; 1 when a block
-- leased ahead was not installed (not needed, not of the size needed, or
-- refused by install_block), for the caller to give back; and how many
-- tickets the call gave. With COUNT, every answer that starts 'ok' ends
-- with {'counted', the part as count_below.lua answers it, without its
-- 'ok'}.
--
-- The common case of a burst, a newcomer joining the back of a line that
-- is already forming, costs no call of its own: whether each user is in
-- line or admitted is read for all of them at once, and the writes of a
-- run of consecutive newcomers (ticket counter, waiting set, presence,
-- stats) are made at once, as is their answer; the log has one entry for
-- the run ('J', domain::LineEvent::JoinedRun), not one per user. A newcomer's
-- ticket is above every ticket in line, so their position is the length
-- of the line. Anyone else (a user already in line or admitted, a user
-- named twice, a queue in another mode, an empty line that may admit on
-- the spot) first gets the run's writes made, then goes through
-- enqueue_one unchanged.
--
-- Tickets are formatted by string.format and the clock is passed as it came
-- (ARGV[1]): Lua's own conversion of a number to a string, which
-- redis.call makes of every numeric argument, costs about as much as the
-- insert.

local BLOCK, WANTED, AHEAD, COUNT = '\1', '\2', '\3', '\4'
local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)
local from = 2
local count_from, count_to
if ARGV[2] == COUNT then
  count_from = 4
  count_to = 3 + tonumber(ARGV[3])
  from = count_to + 1
end
local ahead
if ARGV[from] == BLOCK then
  if cfg.sub_line then
    install_block(cfg, tonumber(ARGV[from + 1]), tonumber(ARGV[from + 2]),
      tonumber(ARGV[from + 3]), tonumber(ARGV[from + 4]))
  end
  from = from + 5
elseif ARGV[from] == AHEAD then
  ahead = { tonumber(ARGV[from + 1]), tonumber(ARGV[from + 2]), tonumber(ARGV[from + 3]),
    tonumber(ARGV[from + 4]) }
  from = from + 5
end
-- The read riding on the call, as the call leaves the sub-line.
local function counted(out)
  if count_from then
    local part = line_part(count_from, count_to)
    table.insert(part, 1, 'counted')
    out[#out + 1] = part
  end
  return out
end
-- The call's answers, and on a sub-line its block as it leaves it.
local function answered(out)
  if cfg.sub_line then
    local first, leased_at = cfg.block_first or 0, cfg.block_ms
    if leased_at == CLOSED then
      first, leased_at = 0, 0
    end
    out[#out + 1] = { 'block', first, cfg.block_next, cfg.block_end, leased_at, ahead and 1 or 0,
      cfg.given or 0 }
  end
  return counted(out)
end
-- Where the call would answer {'lease', size}: the block leased ahead
-- instead, when it is of that size and installs; whether it did. Of the
-- size the memory store's lease would be at this point, it gives the
-- same tickets.
local function leased_ahead(size)
  if not ahead or ahead[2] - ahead[1] ~= size
      or not install_block(cfg, ahead[1], ahead[2], ahead[3], ahead[4]) then
    return false
  end
  ahead = nil
  return block_open(cfg)
end
local wanted_from_first = #ARGV - from + 1
if ARGV[from] == WANTED then
  if cfg.sub_line and block_open(cfg) then
    return counted({ 'ok', { 'resend' } })
  end
  wanted_from_first = tonumber(ARGV[from + 1])
  from = from + 2
end
-- The users still to serve from ARGV[i] on, ARGV[i] included.
local function wanted(i)
  return wanted_from_first - (i - from)
end

local gathering = cfg.mode == 'queueing' and only_waiting(cfg)
-- On a sub-line whose block is closed, a first user who needs a ticket
-- makes the answer 'lease' with nobody served: found before reading every
-- user, as a burst's batch does once a block's τ has passed. Not with a
-- block leased ahead, which the first newcomer installs in the loop below
-- as it would here: the call then reads every user anyway.
if gathering and cfg.sub_line and not ahead and #ARGV >= from and not block_open(cfg)
    and not redis.call('ZSCORE', K_WAITING, ARGV[from])
    and not redis.call('HGET', K_ADMITTED, ARGV[from])
    and not leased_ahead(next_block_size(cfg, wanted(from))) then
  return answered({ 'ok', { 'lease', next_block_size(cfg, wanted(from)) } })
end
local in_line_scores, admitted_records
if gathering then
  local users = { unpack(ARGV, from) }
  in_line_scores = redis.call('ZMSCORE', K_WAITING, unpack(users))
  admitted_records = redis.call('HMGET', K_ADMITTED, unpack(users))
end

local out = { 'ok' }
local named = {}
local run, first_ticket, first_position = {}, nil, nil
-- On a sub-line, the tickets the block has left after the run's. Within a
-- call the clock stands still, so an open block closes only when it has
-- given its last ticket: the run takes its tickets at once when it ends,
-- not each newcomer one at a time (which cost a fifth of the script).
local room = 0

local function end_run()
  local n = #run
  line_length = nil
  if n == 0 then
    return
  end
  local format = string.format
  if cfg.sub_line then
    gave_tickets = first_ticket + n - 1
    cfg.block_next = first_ticket + n
    cfg.given = (cfg.given or 0) + n
    room = 0
    save_block(cfg)
  else
    gave_tickets = redis.call('INCRBY', K_SEQ, n)
  end
  count_arrivals(cfg, n)
  for first = 1, n, 500 do
    local waiting, seen = {}, {}
    for i = first, math.min(first + 499, n) do
      local user = run[i]
      waiting[#waiting + 1] = format('%d', first_ticket + i - 1)
      waiting[#waiting + 1] = user
      seen[#seen + 1] = ARGV[1]
      seen[#seen + 1] = user
    end
    redis.call('ZADD', K_WAITING, unpack(waiting))
    redis.call('ZADD', K_SEEN, 'GT', unpack(seen))
  end
  log_event('J', first_ticket, n)
  local count, span, recent, abandoned = rate_sample()
  out[#out + 1] = { 'joined', n, first_ticket, first_position, cfg.epoch, cfg.mode, count, span,
    cfg.notice, cfg.closed_reason, recent, abandoned, cfg.rate }
  run = {}
end

for i = from, #ARGV do
  local user = ARGV[i]
  local newcomer = gathering and not named[user] and not in_line_scores[i - from + 1]
    and not admitted_records[i - from + 1]
  if newcomer and cfg.sub_line then
    -- A run is one block's consecutive tickets.
    if room == 0 then
      end_run()
      if not block_open(cfg) and not leased_ahead(next_block_size(cfg, wanted(i))) then
        out[#out + 1] = { 'lease', next_block_size(cfg, wanted(i)) }
        break
      end
    end
    if #run == 0 then
      first_ticket = cfg.block_next
      first_position = in_line(cfg) + 1
      room = cfg.block_end - cfg.block_next
    end
    room = room - 1
  elseif newcomer and #run == 0 then
    local length = in_line(cfg)
    if length == 0 and (cfg.max_active > 0 or cfg.rate > 0) then
      newcomer = false
    else
      first_ticket = (tonumber(redis.call('GET', K_SEQ)) or 0) + 1
      first_position = length + 1
    end
  end
  named[user] = true
  if newcomer then
    run[#run + 1] = user
  else
    end_run()
    local answer = enqueue_one(cfg, user)
    if answer[1] == 'lease' and leased_ahead(next_block_size(cfg, wanted(i))) then
      answer = enqueue_one(cfg, user)
    end
    if answer[1] == 'lease' then
      out[#out + 1] = { 'lease', next_block_size(cfg, wanted(i)) }
      break
    end
    out[#out + 1] = answer
  end
end
end_run()
if gave_tickets then
  note_joined(gave_tickets)
end
return answered(out)
