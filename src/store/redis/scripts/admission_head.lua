-- Admission head: the head's part of an admission over sub-lines
-- (`AdmitBatch` and the rate's admitter; docs/design.md, "Admission
-- exactly once"). An admission is one entry journalled at the head between
-- its plan and its settling: the next admitter finishes an entry left
-- unsettled (its replica stopped) before planning its own, so admissions
-- are one at a time per queue and none is left half-done.
-- KEYS: the head's keys (prelude), then its leases (lease.lua), then the
-- admissions settled lately (a sorted set of 'ticket|admitted at|expires
-- at|user' scored by when settled, kept RECENTLY_KEEP_MS), which a
-- sub-line that lost its last pops takes again (sub_line_resync.lua).
-- ARGV: now, step, then by step:
--   'begin', request id ('' for none), due (1 for the rate's admitter):
--     {'ok', 'done', epoch, user, ticket, admitted at, expires at, ...}
--     (a request answered before, or a due step with nothing to do),
--     {'ok', 'finish', entry id, cutoff, admission ttl, request id, keep
--     ms} (an unsettled entry: finish it first), or {'ok', 'plan',
--     version, watermark}; or {'paused'} / {'closed', reason} /
--     {'no_queue'}, or {'resync'} in another history than the head's
--     (lease.lua). Numbers the caller passes back are answered as text.
--   'plan', version, in line and active (summed over the sub-lines by
--     the caller just now, after version was read), max count, due,
--     entry id, request id, keep ms, then the lowest waiting tickets (each
--     `ticket:sub-line`) below the watermark over all sub-lines, ascending:
--     {'ok', 'again'} (another admission came between), or
--     {'ok', 'plan', n, cutoff, admission ttl, counts}: admit those
--     waiting at or below the cutoff, in each sub-line at most its count
--     (of the n, 'n0,n1,...'), then settle.
--   'admitted_by', entry id, user, ticket: whether that entry admitted
--     the user at the ticket, for a receipt of a sub-line made again while
--     it was unsettled (restore_sub_line.lua, 'lost'): while unsettled,
--     the entry to finish first, as 'begin' answers it; then
--     {'ok', 'admitted'} or {'ok', 'free'} by its kept result,
--     {'ok', 'unknown'} once that lapsed.
--   'settle', entry id, then user, ticket, admitted at, expires at, ...
--     of everyone its pops took: counts them, keeps the result under the
--     entry's request id and its own, and ends the entry. Returns the
--     result, {'ok', epoch, user, ticket, admitted at, expires at, ...}:
--     when another admitter settled the entry first, the one it kept,
--     which is what the entry did (this admitter's pops may have found
--     what they kept for it dropped).

local leases = KEYS[OWN]
-- How long a settled entry's result is kept for an admitter still carrying
-- it out when another settled it: far longer than any call takes.
local ENTRY_KEEP_MS = 600000
-- Far longer than a failover takes (the pops a sub-line's replica lacks
-- were made in the moments before its primary was lost).
local RECENTLY_KEEP_MS = 120000
local recently = KEYS[OWN + 1]
if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
-- The watermark reads the sequence, and the journal may have lost its
-- last entries with it (prelude.lua, `same_history`).
if not same_history() then
  return { 'resync' }
end
local v = redis.call('HMGET', K_CONFIG, 'mode', 'max_active', 'admit_per_second', 'created_at_ms',
  'closed_reason', 'admission_ttl_ms', 'admit_version', 'admitting', 'admitting_cutoff',
  'admitting_request', 'admitting_keep', 'admitting_named', 'admitting_counts', 'draw',
  'opens_at_ms')
local cfg = { mode = v[1], max_active = tonumber(v[2]), rate = tonumber(v[3]), epoch = tonumber(v[4]),
  closed_reason = v[5] or '', ttl = tonumber(v[6]) }
local version = tonumber(v[7]) or 0
local step = ARGV[2]

-- The lowest ticket a join may still be given (domain::shards::Head::
-- watermark): leases older than τ + ε are dropped, oldest first, up to
-- the first that is not; the lowest first ticket of those left, or the
-- next ticket when none is.
local function watermark()
  local recent = redis.call('ZRANGE', leases, 0, -1)
  for _, lease in ipairs(recent) do
    local first, leased_at = string.match(lease, '^(%d+):(%d+)$')
    if tonumber(leased_at) + TAU_MS + SKEW_MS > NOW then
      return tonumber(first)
    end
    redis.call('ZREM', leases, lease)
  end
  return (tonumber(redis.call('GET', K_SEQ)) or 0) + 1
end

-- An entry left unsettled, for the caller to finish first: an admission
-- from the line {'ok', 'finish', id, cutoff, ttl, counts}, or AdmitUsers' named
-- users {'ok', 'finish_named', id, keep ms, user, kind, admission held
-- ('' for none), ...}.
local function unsettled()
  if v[12] then
    local out = { 'ok', 'finish_named', v[8], v[11] or '0' }
    for _, planned in ipairs(cjson.decode(v[12])) do
      out[#out + 1] = planned[1]
      out[#out + 1] = planned[2]
      out[#out + 1] = planned[3]
    end
    return out
  end
  return { 'ok', 'finish', v[8], v[9], tostring(cfg.ttl), v[13] or '' }
end

-- Settles entry `id` with `out`, what every admitter of it is answered
-- from then on (settled_before), and returns it.
local function end_entry(id, out)
  -- An entry under way when a sub-line was lost decides its users'
  -- receipts ('admitted_by'), which hold for a release time after the
  -- sub-line was made again (prelude.lua, `receipt_lapsed`): kept as long.
  local keep = ENTRY_KEEP_MS
  local lost = redis.call('HMGET', K_CONFIG, 'lost_under', 'heartbeat_timeout_ms')
  if lost[1] == id then
    local heartbeat = tonumber(lost[2]) or 0
    keep = math.max(keep, heartbeat + math.floor(heartbeat / 4) + 60000)
    redis.call('HDEL', K_CONFIG, 'lost_under')
  end
  keep_result('entry|' .. id, out, keep)
  -- Every ticket at or below an admission's cutoff is admitted or gone
  -- once it settles, and none is given there afterwards (the watermark):
  -- the head keeps the highest, below which a sub-line made again after
  -- a loss gives nothing back (sub_lines.rs, `remake_sub_line`).
  local cutoff = tonumber(v[9])
  if cutoff and cutoff > (tonumber(redis.call('HGET', K_CONFIG, 'admitted_cutoff')) or 0) then
    redis.call('HSET', K_CONFIG, 'admitted_cutoff', cutoff)
  end
  redis.call('HDEL', K_CONFIG, 'admitting', 'admitting_cutoff', 'admitting_request', 'admitting_keep',
    'admitting_named', 'admitting_counts')
  redis.call('HINCRBY', K_CONFIG, 'admit_version', 1)
  return out
end

-- What entry `id` did, for an admitter that finds it settled by another.
local function settled_before(id)
  return kept_result('entry|' .. id) or { 'ok', cfg.epoch }
end

if step == 'admitted_by' then
  local id, user, ticket = ARGV[3], ARGV[4], tonumber(ARGV[5])
  if v[8] == id then
    return unsettled()
  end
  local kept = kept_result('entry|' .. id)
  if not kept then
    return { 'ok', 'unknown' }
  end
  for i = 3, #kept, 4 do
    if kept[i] == user and tonumber(kept[i + 1]) == ticket then
      return { 'ok', 'admitted' }
    end
  end
  return { 'ok', 'free' }
end

if step == 'begin_named' then
  local key = 'users|' .. ARGV[3]
  forget_lapsed_results()
  local previous = redis.call('HGET', K_BATCHES, key)
  if previous then
    local kept = cjson.decode(previous)
    if #kept.users ~= #ARGV - 3 then
      return { 'request_reused' }
    end
    for i, user in ipairs(kept.users) do
      if ARGV[3 + i] ~= user then
        return { 'request_reused' }
      end
    end
    local out = kept.result
    table.insert(out, 2, 'done')
    return out
  end
  if v[8] then
    return unsettled()
  end
  if cfg.mode == 'closed' then
    return { 'closed', cfg.closed_reason }
  end
  open_head_first(v[14], v[15])
  return { 'ok', 'plan', tostring(version) }
end

if step == 'plan_named' then
  -- ARGV: version, admitted now (summed over the sub-lines), override
  -- (1/0), entry id, request id, keep ms, then per user: user, and the
  -- admission they hold ('' for none).
  if tonumber(ARGV[3]) ~= version or v[8] then
    return { 'ok', 'again' }
  end
  if cfg.mode == 'closed' then
    return { 'closed', cfg.closed_reason }
  end
  local capped = cfg.mode ~= 'pass_through' and ARGV[5] ~= '1'
  local room = 1e15
  if cfg.max_active > 0 then
    room = math.max(cfg.max_active - tonumber(ARGV[4]), 0)
  end
  local plan, out, holds = {}, { 'ok', 'plan' }, {}
  for i = 9, #ARGV, 2 do
    local kind = 'admit'
    -- Named again in the call: holds the admission named before.
    if ARGV[i + 1] ~= '' or holds[ARGV[i]] then
      kind = 'already'
    elseif capped and room == 0 then
      kind = 'no_capacity'
    else
      room = room - 1
    end
    holds[ARGV[i]] = kind ~= 'no_capacity'
    plan[#plan + 1] = { ARGV[i], kind, ARGV[i + 1] }
    out[#out + 1] = kind
  end
  redis.call('HSET', K_CONFIG, 'admitting', ARGV[6], 'admitting_request', ARGV[7], 'admitting_keep',
    ARGV[8], 'admitting_named', cjson.encode(plan))
  redis.call('HINCRBY', K_CONFIG, 'admit_version', 1)
  return out
end

if step == 'settle_named' then
  -- ARGV: entry id, how many users, the users, then per user: kind,
  -- ticket, admitted at, expires at.
  local id = ARGV[3]
  if v[8] == id then
    local n = tonumber(ARGV[4])
    local users = { unpack(ARGV, 5, 4 + n) }
    local out, admitted = { 'ok', cfg.epoch }, 0
    for i = 5 + n, #ARGV, 4 do
      out[#out + 1] = { ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]) }
      if ARGV[i] == 'admitted' then
        admitted = admitted + 1
      end
    end
    if admitted > 0 then
      redis.call('HINCRBY', K_STATS, 'admitted', admitted)
    end
    local key = 'users|' .. (v[10] or '')
    keep_result(key, { users = users, result = out }, v[11] or '0')
    return end_entry(id, out)
  end
  -- Settled by another admitter (which finished it): its result.
  return settled_before(id)
end

if step == 'begin' then
  local request, due = ARGV[3], ARGV[4] == '1'
  -- As the memory store: the rate's admitter opens a queue first,
  -- AdmitBatch once its request is new and the mode lets it admit.
  if due then
    open_head_first(v[14], v[15])
  end
  forget_lapsed_results()
  if request ~= '' then
    local previous = redis.call('HGET', K_BATCHES, request)
    if previous then
      local out = cjson.decode(previous)
      table.insert(out, 2, 'done')
      return out
    end
  end
  if v[8] then
    return unsettled()
  end
  -- The rate's admitter reads the watermark whatever the mode, as the
  -- memory store's step does; AdmitBatch is refused first.
  local below = due and watermark()
  if cfg.mode == 'paused' or cfg.mode == 'closed' then
    if due then
      return { 'ok', 'done', cfg.epoch }
    end
    return { cfg.mode, cfg.closed_reason }
  end
  open_head_first(v[14], v[15])
  return { 'ok', 'plan', tostring(version), tostring(below or watermark()) }
end

if step == 'plan' then
  if tonumber(ARGV[3]) ~= version or v[8] then
    return { 'ok', 'again' }
  end
  local active, room, due = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
  local id, request, keep = ARGV[7], ARGV[8], ARGV[9]
  -- The mode as of the plan: paused or closed since the begin, AdmitBatch
  -- is refused and the admitter admits nobody.
  if cfg.mode == 'paused' or cfg.mode == 'closed' then
    if due then
      return { 'ok', 'plan', 0, '0', tostring(cfg.ttl), '' }
    end
    return { cfg.mode, cfg.closed_reason }
  end
  local below = #ARGV - 9
  local free = 1e15
  if cfg.max_active > 0 then
    free = math.max(cfg.max_active - active, 0)
  end
  -- Nobody is admitted while a scheduled opening's draw places people.
  local drawn = v[14]
  if drawn == 'frozen' or drawn == 'hashing' or drawn == 'assigning' or drawn == 'closing'
      or drawn == 'opening' then
    room = 0
  elseif due then
    if cfg.mode == 'pass_through' then
      room = math.min(room, below)
    elseif cfg.mode == 'queueing' and cfg.rate > 0 then
      room = take_tokens(cfg, math.min(room, below, free))
    else
      room = 0
    end
  elseif cfg.mode == 'queueing' then
    room = math.min(room, free, below)
  else
    room = math.min(room, below)
  end
  if room == 0 then
    if request ~= '' then
      keep_result(request, { 'ok', cfg.epoch }, keep)
    end
    return { 'ok', 'plan', 0, '0', tostring(cfg.ttl), '' }
  end
  -- The cutoff, and how many of the planned each sub-line holds.
  local cutoff, counts = nil, {}
  for i = 10, 9 + room do
    local ticket, sub_line = string.match(ARGV[i], '^(%d+):(%d+)$')
    cutoff = ticket
    sub_line = tonumber(sub_line) + 1
    for s = #counts + 1, sub_line do
      counts[s] = 0
    end
    counts[sub_line] = counts[sub_line] + 1
  end
  counts = table.concat(counts, ',')
  redis.call('HSET', K_CONFIG, 'admitting', id, 'admitting_cutoff', cutoff, 'admitting_request',
    request, 'admitting_keep', keep, 'admitting_counts', counts)
  redis.call('HINCRBY', K_CONFIG, 'admit_version', 1)
  return { 'ok', 'plan', room, cutoff, tostring(cfg.ttl), counts }
end

if step == 'settle' then
  local id = ARGV[3]
  if v[8] == id then
    local out = { 'ok', cfg.epoch }
    for i = 4, #ARGV, 4 do
      out[#out + 1] = ARGV[i]
      out[#out + 1] = tonumber(ARGV[i + 1])
      out[#out + 1] = tonumber(ARGV[i + 2])
      out[#out + 1] = tonumber(ARGV[i + 3])
    end
    record_admissions((#ARGV - 3) / 4)
    local recent = {}
    for i = 4, #ARGV, 4 do
      recent[#recent + 1] = NOW
      recent[#recent + 1] = ARGV[i + 1] .. '|' .. ARGV[i + 2] .. '|' .. ARGV[i + 3] .. '|' .. ARGV[i]
    end
    for first = 1, #recent, 1000 do
      redis.call('ZADD', recently, unpack(recent, first, math.min(first + 999, #recent)))
    end
    redis.call('ZREMRANGEBYSCORE', recently, '-inf', '(' .. (NOW - RECENTLY_KEEP_MS))
    local request = v[10] or ''
    if request ~= '' then
      keep_result(request, out, v[11] or '0')
    end
    return end_entry(id, out)
  end
  -- Settled by another admitter (which finished it): its result.
  return settled_before(id)
end

return redis.error_reply('admission_head: unknown step ' .. tostring(step))
