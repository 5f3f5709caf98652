-- One user's enqueue, used by enqueue_many.lua for anyone who is not a
-- newcomer joining the back of the line (prepended after the prelude).
-- Gives a user a ticket (or a pre-queue place before a scheduled opening),
-- or returns the place they hold; a sign of life. The caller has loaded the
-- config and run prepare(). Returns a place (prelude), or {'closed',
-- closing reason} / {'not_open', when the pre-queue opens}, or, on a
-- sub-line whose block is closed, {'lease'} having changed nothing.

local function enqueue_one(cfg, user)
  local record = redis.call('HGET', K_ADMITTED, user)
  if record then
    return admitted_place(cfg, record)
  end
  if cfg.mode == 'closed' then
    return { 'closed', cfg.closed_reason }
  end
  local existing = current_place(cfg, user, true)
  if existing[1] ~= 'none' then
    if not is_final(existing) then
      see(user)
    end
    return existing
  end

  if cfg.draw == 'none' and cfg.opens_at > 0 then
    local window_opens = math.max(cfg.opens_at - cfg.window, 0)
    if NOW < window_opens then
      return { 'not_open', window_opens }
    end
    local arrival = redis.call('HINCRBY', K_CONFIG, 'prequeue_seq', 1)
    redis.call('ZADD', K_PREQUEUE, arrival, user)
    count_arrivals(cfg, 1)
    see(user)
    return prequeue_place(cfg)
  end

  local ticket
  if cfg.sub_line then
    if not block_open(cfg) then
      return { 'lease' }
    end
    ticket = take_block_ticket(cfg)
    save_block(cfg)
  else
    ticket = redis.call('INCR', K_SEQ)
  end
  gave_tickets = ticket
  count_arrivals(cfg, 1)
  -- The line forms only when it must: with nobody waiting, a free slot and
  -- (when the rate is limited) a token, the newcomer goes straight in. A
  -- sub-line sees neither the other sub-lines' line nor the head's count,
  -- so only pass-through admits there.
  local admit_now = false
  if not drawing(cfg) then
    if cfg.mode == 'pass_through' then
      admit_now = true
    elseif cfg.mode == 'queueing' and (cfg.max_active > 0 or cfg.rate > 0) and not cfg.sub_line
        and redis.call('ZCARD', K_WAITING) == 0 and free_slots(cfg) > 0 then
      admit_now = cfg.rate == 0 or take_tokens(cfg, 1) == 1
    end
  end
  if admit_now then
    local expires = admit_user(cfg, user, ticket)
    record_admissions(1)
    return place(cfg, 'admitted', ticket, 0, NOW, expires)
  end
  add_waiting(user, ticket)
  see(user)
  return place(cfg, 'waiting', ticket, redis.call('ZRANK', K_WAITING, user) + 1, 0, 0)
end
