-- Read sequence: the head's ticket sequence, read as a bound told on: a
-- sub-line made again gives back the places of receipts up to it
-- (sub_lines.rs, `remake_sub_line`), so a block leased ahead and given
-- back after this read never takes the sequence below it (give_back.lua).
-- KEYS: the head's keys (prelude). ARGV: now.
-- Returns {'ok', sequence} or {'no_queue'}.

if redis.call('EXISTS', K_CONFIG) == 0 then
  return { 'no_queue' }
end
return { 'ok', told_seq() }
