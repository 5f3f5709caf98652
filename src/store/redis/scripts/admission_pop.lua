-- Admission pop: a sub-line's part of an admission the head planned:
-- admits everyone waiting at or below the cutoff, lowest first, and keeps
-- what it took under the entry's id, so a replay (the entry finished by
-- another admitter) takes nobody else and answers the same. The head
-- counts the admissions when it settles the entry. The sub-line keeps the
-- highest cutoff it was asked to pop to (`popped_cutoff`), from which a
-- head lost while the sub-lines stand is made again (sub_lines.rs,
-- `head_from_sub_lines`).
-- KEYS: the sub-line's keys (prelude). ARGV: now, entry id, cutoff,
-- admission ttl (ms, the head's), how long to keep what it took (ms), and
-- the most it may take: as many as the plan counted here, so a ticket that
-- came below the cutoff since (a join whose clock was behind) is never
-- one more admission than planned.
-- Returns {'ok', user, ticket, admitted at, expires at, ...} or
-- {'no_queue'}.

local cfg = load_config()
if not cfg then
  return { 'no_queue' }
end
local id = ARGV[2]
local previous = kept_result(id)
if previous then
  -- Settled by another admitter meanwhile: taken nobody here.
  if previous[1] == 'settled' then
    return { 'ok' }
  end
  return previous
end
-- An entry planned by a head since lost and made again from the sub-lines
-- (planned at a version below the one the new head began at: sub_lines.rs,
-- `head_from_sub_lines`) takes nobody: its journal went with the head, and
-- the sub-lines' floors were read without it. Its users stay in line for
-- the next admission.
local planned = tonumber(string.match(id, ':v(%d+)$'))
local from = tonumber(redis.call('HGET', K_CONFIG, 'head_version_from'))
if planned and from and planned < from then
  keep_result(id, { 'ok' }, ARGV[5])
  return { 'ok' }
end
prepare(cfg)
cfg.ttl = tonumber(ARGV[4])
if tonumber(ARGV[3]) > (tonumber(redis.call('HGET', K_CONFIG, 'popped_cutoff')) or 0) then
  redis.call('HSET', K_CONFIG, 'popped_cutoff', ARGV[3])
end
local out = { 'ok' }
local taken = redis.call('ZRANGEBYSCORE', K_WAITING, '-inf', ARGV[3], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[6]))
local users = {}
for i = 1, #taken, 2 do
  users[#users + 1] = taken[i]
end
remove_all('ZREM', K_WAITING, users)
-- How long they waited, by this sub-line's marks of when it gave its
-- tickets; the head counts the admissions themselves.
count_waited(cfg, admit_taken(cfg, taken, out))
keep_result(id, out, ARGV[5])
return out
