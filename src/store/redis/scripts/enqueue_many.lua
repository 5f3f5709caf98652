-- Enqueue many: concurrent enqueues of one queue coalesced into one call,
-- each user in turn exactly as enqueue.lua would (see enqueue_one.lua), so
-- Redis pays the call's fixed cost once for all of them.
-- KEYS: the queue's keys (prelude). ARGV: now, user...
-- Returns {'ok', answer...}: one answer of enqueue_one per user, in order;
-- or {'no_queue'}.
--
-- The common case of a burst, a newcomer joining the back of a line that
-- is already forming, costs two reads: the writes of consecutive
-- newcomers (ticket counter, waiting set, log, presence, stats) are
-- gathered and made at once. A newcomer's ticket is above every ticket in
-- line, so their position is the length of the line. Anyone else (a user
-- already in line or admitted, a queue in another mode, an empty line that
-- may admit on the spot) first gets the gathered writes made, then goes
-- through enqueue_one unchanged.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
prepare(cfg)

local gathering = cfg.mode == 'queueing' and only_waiting(cfg)
local last_ticket
local joined = {}
local joined_users = {}

local function make_gathered_writes()
  local n = #joined
  line_length = nil
  if n == 0 then
    return
  end
  gave_tickets = redis.call('INCRBY', K_SEQ, n)
  count_arrivals(cfg, n)
  add_waiting_many(joined)
  for first = 1, n, 500 do
    local seen = {}
    for i = first, math.min(first + 499, n) do
      seen[#seen + 1] = NOW
      seen[#seen + 1] = joined[i][1]
    end
    redis.call('ZADD', K_SEEN, 'GT', unpack(seen))
  end
  joined, joined_users, last_ticket = {}, {}, nil
end

-- Joins a newcomer to the gathered writes and returns their place; nil
-- when the user is not such a newcomer.
local function join_back(user)
  if joined_users[user] or redis.call('HGET', K_ADMITTED, user)
      or redis.call('ZSCORE', K_WAITING, user) then
    return nil
  end
  line_length = line_length or in_line(cfg)
  if line_length == 0 and (cfg.max_active > 0 or cfg.rate > 0) then
    return nil
  end
  last_ticket = (last_ticket or tonumber(redis.call('GET', K_SEQ)) or 0) + 1
  line_length = line_length + 1
  joined[#joined + 1] = { user, last_ticket }
  joined_users[user] = true
  return place(cfg, 'waiting', last_ticket, line_length, 0, 0)
end

local out = { 'ok' }
for i = 2, #ARGV do
  local user = ARGV[i]
  local answer = gathering and join_back(user)
  if not answer then
    make_gathered_writes()
    answer = enqueue_one(cfg, user)
  end
  out[#out + 1] = answer
end
make_gathered_writes()
if gave_tickets then
  note_joined(gave_tickets)
end
return out
