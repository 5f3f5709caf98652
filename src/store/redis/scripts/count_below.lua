-- Count below: for a queue over several sub-lines, this sub-line's part
-- of each position, of the line's length and of the admission rate
-- (prelude.lua, `line_part`). A join call carries the same read when one
-- rides on it (enqueue_many.lua, COUNT).
-- KEYS: the sub-line's keys (prelude). ARGV: now, ticket...
-- Returns {'ok', in line, of them pre-queued or being drawn, the drawn
-- tickets held (above, through: prelude's `drawn_hold`), rate count, rate
-- span, recent admissions, abandonments, count at or below each ticket...}.

local out = line_part(2, #ARGV)
table.insert(out, 1, 'ok')
return out
