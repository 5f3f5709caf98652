//! A queue over several sub-lines (`Queue.shards` above 1): a head in the
//! queue's own slot (`{sale}`: the config, the ticket sequence, the recent
//! leases) and each sub-line in a slot of its own (`{sale/4~0}`, …) with the
//! per-line keys of a one-slot queue and a copy of the config that also
//! holds the sub-line's block of tickets (`docs/design.md`, "One sale over
//! several Redis slots").
//!
//! A user's calls go to their sub-line (`domain::shards::sub_line_of`), so
//! a repeat join finds them in one slot. A join takes its ticket from the
//! sub-line's block; a sub-line whose block is closed answers "lease", and
//! the caller leases a block from the head, installs it and calls again. A
//! position is the waiting tickets at or below one's own summed over the
//! sub-lines, read once the whole call is done, as the memory store counts
//! it.
//!
//! Served over sub-lines so far: joins, lookups, leaves, presence, the
//! copy's reads, admission (`AdmitBatch` and the rate's admitter, through
//! the head's journal), completions and checks of admissions, and places
//! given back from receipts, and a scheduled opening and its draw
//! (`opening.rs`). Every other call meets the head's config,
//! which a one-slot script refuses (`prelude.lua`), so it fails rather than
//! act on the head's empty line.
//!
//! One-slot queues pay nothing for this: their calls go to their slot as
//! before, and only a call refused because the queue is kept over
//! sub-lines reads the layout (then kept for [`FRESH`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{join_all, try_join_all};
use redis::Value;

use super::breaker::{Breaker, SUB_LINE_OPENING, SUB_LINE_RESYNC, SUB_LINES, bounded, guard};
use super::keys::{self, QUEUE_KEYS};
use super::lua::Scripts;
use super::reply::{
    Reply, bad_reply, parse_admitted, parse_enqueued_runs, parse_named, parse_place, tagged,
};
use super::topology::Connector;
use crate::domain::shards::{Block, TAU_MS, next_block_size, sub_line_of};
use crate::domain::{
    Admitted, DrawHold, NamedAdmission, Place, PlaceClaim, PlaceState, QueueConfig, QueueId,
    QueueStats, RateSample, Refusal, RequestId, Restoration, UserId,
};
use crate::{Error, Result};

/// How long a queue's layout is trusted before it is read again. A queue
/// deleted and made again under its name with another number of sub-lines
/// has other sub-line keys (`Layout::new`), so the old layout finds no
/// sub-line and is read again at once; this bounds how long a layout read
/// before a queue is made again in one slot is asked first.
pub(super) const FRESH: Duration = Duration::from_secs(1);

/// Most leases one call takes for one sub-line before giving up: each
/// lease at least doubles the block, so a call of 256 users needs at most
/// nine.
const MAX_LEASES: usize = 16;

/// Most times an admission starts again because another came between its
/// reads and its plan, or finishes another's entry first.
const MAX_ATTEMPTS: usize = 8;

/// How long a sub-line keeps what an admission entry's pop took (or what
/// it did for a named user), for a replay by the next admitter: a day, far
/// longer than any entry stays unsettled while the queue is used. The
/// admitter that settles an entry drops them at once.
const POP_KEEP_MS: u64 = 86_400_000;

/// Where a queue over sub-lines keeps each of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) shards: u32,
    /// Each sub-line's hash tag.
    tags: Vec<String>,
}

impl Layout {
    pub(super) fn sub_line(&self, user: &UserId) -> usize {
        sub_line_of(user.as_str(), self.shards) as usize
    }

    pub(super) fn keys(&self, prefix: &str, sub_line: usize) -> Result<[String; QUEUE_KEYS]> {
        Ok(keys::tagged_keys(prefix, self.tag(sub_line)?))
    }

    /// Sub-line `sub_line`'s hash tag.
    pub(super) fn tag(&self, sub_line: usize) -> Result<&str> {
        self.tags.get(sub_line).map(String::as_str).ok_or_else(|| {
            Error::Internal(format!(
                "sub-line {sub_line} asked of a queue of {}",
                self.shards
            ))
        })
    }

    /// The tags a queue of `shards` sub-lines is made with, spread over the
    /// nodes `owner` says own each slot (`domain::shards::sub_line_tags`).
    ///
    /// The tags name the number of sub-lines (`sale/4~0`): a queue made
    /// again under its name with another number has none of the old keys,
    /// so a replica still holding the old layout finds no sub-line there
    /// and reads the layout again, rather than spreading users by the old
    /// number over sub-lines that happen to exist.
    pub(super) fn new(queue: &QueueId, shards: u32, owner: impl Fn(u16) -> usize) -> Self {
        let base = match shards {
            0 | 1 => queue.to_string(),
            shards => format!("{queue}/{shards}"),
        };
        Self {
            shards,
            tags: crate::domain::shards::sub_line_tags(queue.as_str(), &base, shards, owner),
        }
    }

    /// The head's config fields naming the sub-lines.
    pub(super) fn head_field(&self) -> String {
        self.tags.join(",")
    }

    fn parse(shards: u32, field: &str) -> Result<Self> {
        let tags: Vec<String> = field.split(',').map(str::to_owned).collect();
        if tags.len() != shards as usize {
            return Err(bad_reply("the head's sub-lines do not match its shards"));
        }
        Ok(Self { shards, tags })
    }
}

/// The layouts of queues kept over sub-lines, as last read.
#[derive(Default)]
pub(super) struct Layouts {
    known: Mutex<HashMap<QueueId, (Instant, Arc<Layout>)>>,
}

impl Layouts {
    /// The queue's layout if it was read less than [`FRESH`] ago.
    pub(super) fn known(&self, queue: &QueueId) -> Option<Arc<Layout>> {
        let known = self.known.lock().ok()?;
        let (read, layout) = known.get(queue)?;
        (read.elapsed() < FRESH).then(|| Arc::clone(layout))
    }

    /// The queue's layout as last read, however long ago: enough to pick a
    /// batching lane, which never decides where a user is served.
    pub(super) fn last(&self, queue: &QueueId) -> Option<Arc<Layout>> {
        let known = self.known.lock().ok()?;
        known.get(queue).map(|(_, layout)| Arc::clone(layout))
    }

    pub(super) fn forget(&self, queue: &QueueId) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(queue);
        }
    }

    fn keep(&self, queue: &QueueId, layout: Arc<Layout>) {
        if let Ok(mut known) = self.known.lock() {
            known.retain(|_, (read, _)| read.elapsed() < FRESH);
            known.insert(queue.clone(), (Instant::now(), layout));
        }
    }
}

/// What a sub-line gave ([`SubLineLink::given_on`]).
struct Given {
    reached: u64,
    open: Option<(u64, i64)>,
}

/// A lost head as its sub-lines make it again
/// ([`SubLineLink::head_from_sub_lines`]).
pub(super) struct HeadAgain {
    /// The queue as it was.
    pub(super) config: QueueConfig,
    /// The head's config fields.
    pub(super) fields: Vec<(&'static str, String)>,
    /// The lost queue's tickets given back from receipts (the head's
    /// `given_back`), each once.
    pub(super) given_back: Vec<u64>,
}

/// Leases of a lost head a sub-line may still install after the head is
/// made again from the sub-lines, at most: its sequence starts that many
/// blocks of the largest size above what they hold, so those leases' tickets
/// stay below every newer lease's (gaps cost nothing: positions count
/// waiting tickets). A replica's joins lease for a sub-line one call at a
/// time (`batch.rs`), so this bounds the replicas leasing for one sub-line
/// at the moment of the loss.
const LEASES_IN_FLIGHT: u64 = 64;

/// Most tickets spared below a sub-line's floor when a head is made again
/// from its sub-lines ([`SubLineLink::head_from_sub_lines`]).
const SPARED_MOST: usize = 1_000;

/// Changes a line's log numbers in a millisecond, at most: a sub-line made
/// again numbers its log from its making's millisecond (Unix time) times
/// this. Redis runs far below it, and the numbers stay exact as sorted-set
/// scores (below 2^53) until the 2250s.
const LOG_SEQ_PER_MS: u64 = 1_000;

/// What calls on a queue's sub-lines need: a connection, the scripts and
/// the key prefix.
#[derive(Clone, Copy)]
pub(super) struct SubLineLink<'a> {
    pub(super) queue: &'a QueueId,
    pub(super) prefix: &'a str,
    pub(super) connector: &'a Connector,
    pub(super) scripts: &'a Scripts,
    pub(super) timeout: Duration,
    pub(super) breaker: &'a Arc<Breaker>,
    pub(super) layouts: &'a Layouts,
    pub(super) rounds: &'a super::rounds::Rounds,
    pub(super) blocks: &'a Blocks,
    pub(super) resyncs: &'a tokio::sync::Mutex<()>,
}

/// Each sub-line's block as this store's last call of it left it, for the
/// next call to choose what it sends.
///
/// In a burst a sub-line's batches come further apart than τ, so each
/// finds its block closed and needs a new one, leased from the head. A
/// call that finds the block closed answers 'lease' at its first newcomer,
/// and the rest of the batch goes again with the block. Sending the whole
/// batch to be told so cost Redis reading every name twice; sending its
/// first user alone, with the count it stands for, still cost a call. So
/// when the block the last call left is closed, and that call gave
/// tickets to at least half its users (a burst's newcomers) from a block
/// this store leased, the next block is leased ahead, of the size the
/// call's 'lease' would ask (`domain::shards::next_block_size` for the
/// call's users), and goes with the batch: one lease and one call. The
/// script installs it where that 'lease' would come, when it is of that
/// size (`enqueue_many.lua`); a block not installed (the block was open
/// after all, or the first users already held places) is given back
/// (`give_back.lua`): the head's sequence goes back where nothing came
/// after the lease, so the tickets are those of a lease asked when
/// needed, the memory store's; otherwise its numbers are a gap. Without
/// a burst, or with no block known (this store's first call, or a
/// sub-line another replica served since), the first user goes alone
/// when the batch has several, and a block found open answers 'resend':
/// everyone goes in the next call.
#[derive(Default)]
pub(super) struct Blocks(Mutex<HashMap<QueueId, Vec<Option<LastCall>>>>);

/// A sub-line's block as a call left it; whether the call gave tickets
/// from it to at least half its users, it being the last block this
/// store leased for the sub-line (with other replicas joining the
/// sub-line, a block leased ahead would often find theirs open, and be
/// leased and given back for nothing); and the first ticket of that last
/// block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LastCall {
    block: Option<Block>,
    gave: bool,
    leased: Option<u64>,
}

/// What a call of a sub-line's users sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sending {
    /// Everyone, the block being open or the call of one user.
    All,
    /// The first user alone, with the count of users.
    FirstAlone,
    /// Everyone, with a block of this size leased ahead.
    Ahead(u64),
}

impl Blocks {
    /// What a call of `users` users of `sub_line` sends at `now_ms`.
    fn sending(&self, queue: &QueueId, sub_line: usize, users: usize, now_ms: u64) -> Sending {
        let blocks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let last = blocks
            .get(queue)
            .and_then(|calls| calls.get(sub_line).copied().flatten());
        match last {
            Some(last) if last.block.is_some_and(|b| b.open_at(now_ms, TAU_MS)) => Sending::All,
            Some(LastCall {
                block, gave: true, ..
            }) => Sending::Ahead(next_block_size(block.as_ref(), users as u64)),
            _ if users > 1 => Sending::FirstAlone,
            _ => Sending::All,
        }
    }

    /// Notes the block a call left, whether the call gave tickets, and the
    /// first ticket of a block it leased. The last answered stands: of
    /// two calls answered out of their order the earlier may stand, which
    /// costs a call or a lease given back, never a wrong ticket, where
    /// keeping the highest block would hold a queue deleted and made again
    /// (its numbers from 1 again) to a block it no longer has.
    fn note(
        &self,
        queue: &QueueId,
        sub_line: usize,
        block: Option<Block>,
        gave: bool,
        leased: Option<u64>,
    ) {
        let mut blocks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let calls = blocks.entry(queue.clone()).or_default();
        if calls.len() <= sub_line {
            calls.resize(sub_line + 1, None);
        }
        let leased = leased.or(calls[sub_line].and_then(|kept| kept.leased));
        calls[sub_line] = Some(LastCall {
            block,
            gave: gave && block.is_some_and(|b| Some(b.first) == leased),
            leased,
        });
    }

    pub(super) fn forget(&self, queue: &QueueId) {
        let mut blocks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        blocks.remove(queue);
    }
}

/// Whether a call was refused because the queue is kept over sub-lines.
fn over_sub_lines(error: &Error) -> bool {
    matches!(error, Error::Internal(message) if message.starts_with(SUB_LINES))
}

/// Runs a call the store serves over sub-lines: `over` with the queue's
/// layout when it is known to be kept over sub-lines, else `one_slot`, and
/// `over` after all when the one slot turns out to be a head. A known
/// layout whose sub-lines are gone (the queue made again in one slot) is
/// forgotten, and the call goes to the one slot.
pub(super) async fn routed<T, O, OF, S, SF>(
    link: &SubLineLink<'_>,
    one_slot: O,
    over: S,
) -> Result<T>
where
    O: FnOnce() -> OF,
    OF: Future<Output = Result<T>>,
    S: Fn(Arc<Layout>) -> SF,
    SF: Future<Output = Result<T>>,
{
    if let Some(layout) = link.layouts.known(link.queue) {
        match over(layout).await {
            Err(Error::QueueNotFound(_)) => {
                link.layouts.forget(link.queue);
                link.blocks.forget(link.queue);
            }
            answer => return answer,
        }
    }
    match one_slot().await {
        Err(error) if over_sub_lines(&error) => over(link.layout().await?).await,
        answer => answer,
    }
}

impl SubLineLink<'_> {
    /// Runs `call`; on a sub-line in a new history (`prelude.lua`,
    /// `load_config`), resyncs it first and runs `call` again.
    ///
    /// A sub-line that answers that it holds no queue while its head
    /// stands (its Redis came back empty) is made again from the head's
    /// config first, as [`Self::make_sub_line`] makes it with the queue.
    async fn value(&self, operation: &'static str, call: ScriptCall<'_>) -> Result<Value> {
        // At most a re-making and a resync (a sub-line made again is in a
        // history it has not checked) before the call itself.
        let (mut remade, mut resynced, mut head_resynced) = (false, false, false);
        let mut opened = false;
        loop {
            match self.value_once(operation, call.clone()).await {
                // A scheduled opening due and not made (`opening.rs`);
                // still not made once this call made it (another maker's
                // under way, or the head just lost it): try again.
                Err(Error::Internal(message)) if message.starts_with(SUB_LINE_OPENING) => {
                    if opened {
                        return Err(Error::Unavailable(message));
                    }
                    Box::pin(self.open(call.now_ms)).await?;
                    opened = true;
                }
                // A head in a new history (`prelude.lua`, `same_history`).
                Ok(value) if resync_asked(&value) && !head_resynced => {
                    self.resync(call.now_ms).await?;
                    head_resynced = true;
                }
                Err(Error::Internal(message)) if message.starts_with(SUB_LINE_RESYNC) => {
                    if resynced {
                        // Another failover since: the caller may try again.
                        return Err(Error::Unavailable(message));
                    }
                    // One resync at a time: whoever waited finds it done.
                    let _one = self.resyncs.lock().await;
                    match self.value_once(operation, call.clone()).await {
                        Err(Error::Internal(message)) if message.starts_with(SUB_LINE_RESYNC) => {
                            self.resync_sub_line(&call.keys).await?;
                        }
                        // Resynced by another replica meanwhile, and the
                        // opening due: the next turn makes it.
                        Err(Error::Internal(message)) if message.starts_with(SUB_LINE_OPENING) => {}
                        answer => return answer,
                    }
                    resynced = true;
                }
                Ok(value) if no_queue(&value) && !remade => {
                    if !self.remake_sub_line(&call.keys, call.now_ms).await? {
                        return Ok(value);
                    }
                    remade = true;
                }
                answer => return answer,
            }
        }
    }

    /// Makes the sub-line whose keys are `keys` again from its head, when
    /// the head stands and still names it; whether it did.
    async fn remake_sub_line(&self, keys: &[&str], now_ms: u64) -> Result<bool> {
        let Some(tag) = keys.first().and_then(|key| keys::tag_of(key)) else {
            return Ok(false);
        };
        if tag == self.queue.as_str() {
            return Ok(false);
        }
        let head = keys::queue_keys(self.prefix, self.queue);
        let fields: HashMap<String, String> = self
            .on_slot(
                "remake_sub_line",
                self.queue.as_str(),
                redis::cmd("HGETALL").arg(&head[0]),
            )
            .await?;
        // Only once the queue's creation made every sub-line: before, a
        // sub-line not made yet is not lost.
        let (Some(shards), Some(tags), Some(_)) = (
            fields.get("shards").and_then(|n| n.parse().ok()),
            fields.get("sub_lines"),
            fields.get("sub_lines_made"),
        ) else {
            return Ok(false);
        };
        let layout = Layout::parse(shards, tags)?;
        let Some(sub_line) = (0..layout.shards as usize).find(|&s| layout.tag(s).ok() == Some(tag))
        else {
            return Ok(false);
        };
        // What the lost sub-line may have held: tickets above the last
        // admission's cutoff (everything at or below it was admitted or
        // gone), up to the last the head leased. Its users' receipts give
        // those back, each once (`restore_sub_line.lua`).
        // A head made again from its sub-lines keeps each one's floor and
        // the tickets waiting below it then, which stay places to give
        // back unless an admission settled above them since.
        let floor = fields
            .get("admitted_floors")
            .and_then(|floors| floors.split(',').nth(sub_line))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        let cutoff = fields
            .get("admitted_cutoff")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        let epoch = fields.get("created_at_ms").cloned().unwrap_or_default();
        let spared: Vec<String> = fields
            .get("admitted_spared")
            .and_then(|spared| spared.split(';').nth(sub_line))
            .into_iter()
            .flat_map(|tickets| tickets.split(','))
            .filter_map(|ticket| ticket.parse::<u64>().ok())
            .filter(|ticket| *ticket > cutoff)
            .map(|ticket| format!("s:{epoch}:{ticket}"))
            .collect();
        let lost_head = cutoff.max(floor) + 1;
        let lost_top = match self
            .value_once(
                "remake_sub_line",
                ScriptCall::new(&self.scripts.read_seq, &head, now_ms),
            )
            .await
            .and_then(|reply| Reply::of(reply, self.queue))
        {
            Ok(mut reply) => reply.u64()?,
            Err(Error::QueueNotFound(_)) => 0,
            Err(error) => return Err(error),
        };
        // An admission journalled and not settled may have popped the lost
        // sub-line's users at or below its cutoff and settle them later:
        // their receipts wait for its record (`admission_head.lua`,
        // 'admitted_by').
        let pending = match (
            fields.get("admitting"),
            fields.get("admitting_cutoff"),
            fields.get("admitting_named"),
        ) {
            (Some(entry), Some(cutoff), None) => Some((entry.clone(), cutoff.clone())),
            _ => None,
        };
        let fields_version = fields.get("settings_version").cloned();
        let Some(config) = super::fields::parse_config(self.queue, fields)? else {
            return Ok(false);
        };
        tracing::warn!(
            queue = %self.queue,
            sub_line,
            "a sub-line of the queue was lost by its Redis; made again from its head"
        );
        // Nobody could be heard while it was lost: presence counts from
        // now, so receipts issued before are good for a release time.
        let settings_version = fields_version.unwrap_or_default();
        let mut lost = vec![
            ("lost_head", lost_head.to_string()),
            ("lost_top", lost_top.to_string()),
            ("presence_since_ms", now_ms.to_string()),
            // Everything below was admitted or gone, or is spared: as if
            // popped so far, for a head made again from it.
            ("popped_cutoff", (lost_head - 1).to_string()),
            // Its log starts after any number the lost one reached (under
            // a thousand changes a millisecond, ever), so a replica's copy
            // reading on from the lost log's numbers finds it incomplete
            // and reads the sub-line afresh (`line_changes.lua`), rather
            // than taking the new log's changes from the middle.
            ("log_seq", now_ms.saturating_mul(LOG_SEQ_PER_MS).to_string()),
            // Later copies of settings apply only if newer (copy_settings).
            ("settings_version", settings_version),
        ];
        if let Some((entry, cutoff)) = pending {
            // The head keeps that entry's result as long as the sub-line's
            // receipts may ask it (`admission_head.lua`, `end_entry`).
            self.on_slot::<i64>(
                "remake_sub_line",
                self.queue.as_str(),
                redis::cmd("HSET")
                    .arg(&head[0])
                    .arg("lost_under")
                    .arg(&entry),
            )
            .await?;
            lost.extend([("lost_entry", entry), ("lost_entry_cutoff", cutoff)]);
        }
        if !spared.is_empty() {
            // Before the sub-line is made, so its first receipt finds them.
            self.on_slot::<i64>(
                "remake_sub_line",
                tag,
                redis::cmd("SADD")
                    .arg(keys::tagged_given_back_key(self.prefix, tag))
                    .arg(&spared),
            )
            .await?;
        }
        self.make_sub_line(&layout, sub_line, &config, &lost, false)
            .await?;
        Ok(true)
    }

    /// The head of a queue over sub-lines, made again from them: when the
    /// head was lost (its node back empty) while every sub-line of
    /// `layout` stands with one queue's copy of the config, the queue goes
    /// on as it was, everyone in their place, rather than made afresh over
    /// empty sub-lines. `None` when a sub-line is missing or of another
    /// queue.
    ///
    /// The head's config is the copy of the latest settings version (an
    /// update copies to the sub-lines after the head), with the lost
    /// queue's adoption as the sub-lines last kept it. Its sequence starts
    /// above every ticket a sub-line gave and every block one holds, by a
    /// margin of blocks a lease of the lost head still in flight could
    /// install. Each sub-line's admitted floor, below which that sub-line
    /// made again after a loss gives back only the places spared, is the
    /// highest cutoff a pop there was asked to take to; the tickets still
    /// waiting at or below it (a place given back from a receipt, a join
    /// whose clock was behind) are spared. When `epoch_ms` is given, only
    /// sub-lines of the queue of that epoch are taken.
    pub(super) async fn head_from_sub_lines(
        &self,
        layout: &Layout,
        epoch_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<HeadAgain>> {
        let mut newest: Option<(u64, HashMap<String, String>)> = None;
        let mut epoch = epoch_ms;
        // The head's admission versions start here, above any the lost
        // head reached (it counted from its own making at most this way,
        // far fewer than ten a millisecond), and below 10^14, which the
        // scripts answer in full.
        let version_from = now_ms.saturating_mul(10);
        let (mut floors, mut spared, mut reached, mut given_back) =
            (Vec::new(), Vec::new(), 0, Vec::new());
        let mut adoption: Option<(u64, u64)> = None;
        for sub_line in 0..layout.shards as usize {
            let keys = layout.keys(self.prefix, sub_line)?;
            let tag = layout.tag(sub_line)?;
            let fields: HashMap<String, String> = self
                .on_slot("create_queue", tag, redis::cmd("HGETALL").arg(&keys[0]))
                .await?;
            let field = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
            let ours = field("sub_line") == Some(sub_line as u64)
                && field("shards") == Some(u64::from(layout.shards))
                && field("created_at_ms").is_some()
                && epoch.is_none_or(|epoch| field("created_at_ms") == Some(epoch));
            if !ours {
                return Ok(None);
            }
            epoch = field("created_at_ms");
            // From here on this sub-line takes no pop of an entry the lost
            // head planned (`admission_pop.lua`); one that came before is
            // in the popped cutoff read after it.
            self.on_slot::<i64>(
                "create_queue",
                tag,
                redis::cmd("HSET")
                    .arg(&keys[0])
                    .arg("head_version_from")
                    .arg(version_from),
            )
            .await?;
            let popped_now: Option<u64> = self
                .on_slot(
                    "create_queue",
                    tag,
                    redis::cmd("HGET").arg(&keys[0]).arg("popped_cutoff"),
                )
                .await?;
            let popped = popped_now.unwrap_or(0);
            let below: Vec<(String, u64)> = self
                .on_slot(
                    "create_queue",
                    tag,
                    redis::cmd("ZRANGE")
                        .arg(&keys[2])
                        .arg(0)
                        .arg(popped)
                        .arg("BYSCORE")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(SPARED_MOST + 1)
                        .arg("WITHSCORES"),
                )
                .await?;
            let members: Vec<String> = self
                .on_slot(
                    "create_queue",
                    tag,
                    redis::cmd("SMEMBERS").arg(keys::tagged_given_back_key(self.prefix, tag)),
                )
                .await?;
            // Spared places of a loss before that nobody has come back
            // for yet stay spared.
            let marker = format!("s:{}:", field("created_at_ms").unwrap_or(0));
            let claimed: std::collections::HashSet<&str> =
                members.iter().map(String::as_str).collect();
            let mut kept: Vec<u64> = below.iter().map(|(_, ticket)| *ticket).collect();
            kept.extend(
                members
                    .iter()
                    .filter_map(|m| m.strip_prefix(marker.as_str()))
                    .filter(|ticket| !claimed.contains(ticket))
                    .filter_map(|ticket| ticket.parse::<u64>().ok())
                    .filter(|ticket| *ticket <= popped),
            );
            kept.sort_unstable();
            kept.dedup();
            // Past so many, the floor goes below them instead.
            let floor = match kept.first().copied() {
                Some(lowest) if kept.len() > SPARED_MOST => {
                    kept.clear();
                    lowest.saturating_sub(1)
                }
                _ => popped,
            };
            floors.push(floor);
            let kept: Vec<String> = kept.iter().map(u64::to_string).collect();
            spared.push(kept.join(","));
            reached = reached.max(self.given_on(layout, sub_line).await?.reached);
            given_back.extend(
                members
                    .iter()
                    .filter_map(|m| m.strip_prefix("a:")?.parse::<u64>().ok()),
            );
            if let (Some(adopted), Some(floor)) = (field("adopt_epoch_ms"), field("adopt_head")) {
                adoption = Some(match adoption {
                    Some((kept, kept_floor)) => (kept.max(adopted), kept_floor.max(floor)),
                    None => (adopted, floor),
                });
            }
            let version = field("settings_version").unwrap_or(0);
            if newest.as_ref().is_none_or(|(latest, _)| version > *latest) {
                newest = Some((version, fields));
            }
        }
        let Some((version, fields)) = newest else {
            return Ok(None);
        };
        let Some(mut config) = super::fields::parse_config(self.queue, fields)? else {
            return Ok(None);
        };
        if let (Some(kept), Some((adopted, floor))) = (config.adoption.as_mut(), adoption) {
            kept.epoch_ms = adopted;
            kept.head = floor;
        }
        let mut head = super::fields::config_fields(&config);
        let margin = u64::from(layout.shards) * crate::domain::shards::MAX_BLOCK * LEASES_IN_FLIGHT;
        let floors_field: Vec<String> = floors.iter().map(u64::to_string).collect();
        head.extend([
            ("settings_version", version.to_string()),
            ("sub_lines", layout.head_field()),
            ("sub_lines_made", "1".to_owned()),
            // No admission settled here yet: the floors say what was.
            ("admitted_floors", floors_field.join(",")),
            ("admitted_spared", spared.join(";")),
            ("start_seq", (reached + margin).to_string()),
            // A plan begun before the loss never matches a version of the
            // head made again, and its entry's pops are refused.
            ("admit_version", version_from.to_string()),
            ("from_parts", "1".to_owned()),
        ]);
        Ok(Some(HeadAgain {
            config,
            fields: head,
            given_back,
        }))
    }

    /// Gives each sub-line the head's settings as of its settings version
    /// (`copy_settings.lua`): a sub-line holding a later version keeps it.
    pub(super) async fn copy_settings(
        &self,
        layout: &Layout,
        head: &HashMap<String, String>,
        now_ms: u64,
    ) -> Result<()> {
        let mut settings = vec![
            head.get("settings_version")
                .cloned()
                .ok_or_else(|| bad_reply("a head without its settings version"))?,
        ];
        for name in super::fields::SETTINGS {
            settings.push(name.to_owned());
            settings.push(head.get(name).cloned().unwrap_or_default());
        }
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        for sub_line in 0..layout.shards as usize {
            self.on_sub_line(
                "update_queue",
                &self.scripts.copy_settings,
                layout,
                sub_line,
                &settings,
                now_ms,
            )
            .await?;
        }
        Ok(())
    }

    /// Makes sub-line `sub_line` of a queue over sub-lines with its copy of
    /// `config` (`create_queue.lua` on its keys), unless it holds one; or,
    /// `anew` (the queue's creation), over whatever it holds.
    pub(super) async fn make_sub_line(
        &self,
        layout: &Layout,
        sub_line: usize,
        config: &QueueConfig,
        extra: &[(&'static str, String)],
        anew: bool,
    ) -> Result<()> {
        let keys = layout.keys(self.prefix, sub_line)?;
        let mut fields: Vec<String> = Vec::new();
        for (field, value) in super::fields::config_fields(config)
            .into_iter()
            .chain(extra.iter().cloned())
        {
            fields.extend([field.to_owned(), value]);
        }
        fields.extend(["sub_line".to_owned(), sub_line.to_string()]);
        if anew {
            fields.extend(["made_anew".to_owned(), "1".to_owned()]);
        }
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        // The script's own key (a deletion mark it clears) is the
        // sub-line's ticket sequence, which a sub-line does not use; then
        // the places given back, which a sub-line made anew starts without.
        let mark = [
            keys[1].clone(),
            keys::tagged_given_back_key(self.prefix, layout.tag(sub_line)?),
        ];
        let value = self
            .value_once(
                "create_queue",
                ScriptCall::new(&self.scripts.create_queue, &keys, config.created_at_ms)
                    .own_keys(&mark)
                    .args(&fields),
            )
            .await?;
        match Reply::of(value, self.queue) {
            Ok(_) | Err(Error::QueueAlreadyExists(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Takes again, on the sub-line whose keys are `keys`, the admissions
    /// the head settled lately (`sub_line_resync.lua`), in chunks, the
    /// last of which records the sub-line's history.
    async fn resync_sub_line(&self, keys: &[&str]) -> Result<()> {
        const CHUNK: usize = 500;
        let scope = keys.first().and_then(|key| keys::tag_of(key));
        let layout = self.layout().await?;
        let sub_line = (0..layout.shards as usize).find(|&s| layout.tag(s).ok() == scope);
        let entries: Vec<String> = self
            .on_slot(
                "resync",
                self.queue.as_str(),
                redis::cmd("ZRANGE")
                    .arg(keys::recently_admitted_key(self.prefix, self.queue))
                    .arg(0)
                    .arg(-1),
            )
            .await?;
        // Only this sub-line's users (`ticket|at|until|user`).
        let entries: Vec<String> = entries
            .into_iter()
            .filter(|entry| {
                let user = entry.splitn(4, '|').nth(3).unwrap_or_default();
                sub_line.is_none_or(|s| sub_line_of(user, layout.shards) as usize == s)
            })
            .collect();
        let chunks: Vec<&[String]> = entries.chunks(CHUNK).collect();
        let last = chunks.len().saturating_sub(1);
        for at in 0..chunks.len().max(1) {
            let mut invocation = self.scripts.sub_line_resync.prepare_invoke();
            for key in keys.iter().take(QUEUE_KEYS) {
                invocation.key(*key);
            }
            invocation.arg(0).arg(if at == last { "1" } else { "0" });
            for entry in chunks.get(at).copied().unwrap_or_default() {
                invocation.arg(entry);
            }
            let mut conn = self
                .connector
                .connection(self.timeout, self.breaker)
                .await?;
            let value: Value = bounded(
                "resync",
                self.timeout,
                guard(
                    self.breaker,
                    self.connector,
                    &conn,
                    Some(scope.unwrap_or(self.queue.as_str())),
                ),
                invocation.invoke_async(&mut conn),
            )
            .await?;
            Reply::of(value, self.queue)?;
        }
        Ok(())
    }

    async fn value_once(&self, operation: &'static str, call: ScriptCall<'_>) -> Result<Value> {
        // Scoped by the slot's own tag (the head's is the queue's id).
        let scope = call
            .keys
            .first()
            .and_then(|key| keys::tag_of(key))
            .unwrap_or(self.queue.as_str());
        let mut conn = self
            .connector
            .connection(self.timeout, self.breaker)
            .await?;
        let mut invocation = call.script.prepare_invoke();
        for key in call.keys.iter() {
            invocation.key(key);
        }
        invocation.arg(call.now_ms);
        for arg in call.args {
            invocation.arg(arg);
        }
        bounded(
            operation,
            self.timeout,
            guard(self.breaker, self.connector, &conn, Some(scope)),
            invocation.invoke_async(&mut conn),
        )
        .await
    }

    async fn run(&self, operation: &'static str, call: ScriptCall<'_>) -> Result<Reply> {
        Reply::of(self.value(operation, call).await?, self.queue)
    }

    /// The queue's layout: as known, or read from the head now.
    pub(super) async fn layout(&self) -> Result<Arc<Layout>> {
        if let Some(layout) = self.layouts.known(self.queue) {
            return Ok(layout);
        }
        let mut conn = self
            .connector
            .connection(self.timeout, self.breaker)
            .await?;
        let head = keys::queue_keys(self.prefix, self.queue);
        let (created, shards, tags): (Option<String>, Option<u32>, Option<String>) = bounded(
            "layout",
            self.timeout,
            guard(
                self.breaker,
                self.connector,
                &conn,
                Some(self.queue.as_str()),
            ),
            redis::cmd("HMGET")
                .arg(&head[0])
                .arg("created_at_ms")
                .arg("shards")
                .arg("sub_lines")
                .query_async(&mut conn),
        )
        .await?;
        if created.is_none() {
            return Err(Error::QueueNotFound(self.queue.to_string()));
        }
        let layout = Arc::new(match (shards.unwrap_or(1), tags) {
            (1, _) => Layout::new(self.queue, 1, |_| 0),
            (shards, Some(tags)) => Layout::parse(shards, &tags)?,
            (_, None) => return Err(bad_reply("a head without its sub-lines")),
        });
        if layout.shards > 1 {
            self.layouts.keep(self.queue, Arc::clone(&layout));
        }
        Ok(layout)
    }

    /// Joins `users` of a queue over sub-lines: each sub-line's users in
    /// their order, sub-line after sub-line (0 first), then every place
    /// read as the call left the line.
    #[cfg(test)]
    pub(super) async fn enqueue_many(
        &self,
        layout: &Layout,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<Vec<Result<Place>>> {
        let (places, coming) = self.join_many(layout, users, now_ms, None).await?;
        self.read_joined(layout, places, now_ms, coming).await
    }

    /// The joins of [`Self::enqueue_many`], their places still to be read
    /// ([`Self::read_joined`]): each place with how far into its run it
    /// came, and the call counted as coming to its round. `lane` is the
    /// sub-line whose batching lane makes the call: a read of the round
    /// riding on the lane's next call (`rounds.rs`) goes with the call on
    /// that sub-line.
    pub(super) async fn join_many(
        &self,
        layout: &Layout,
        users: &[UserId],
        now_ms: u64,
        lane: Option<usize>,
    ) -> Result<(Vec<(Result<Place>, u64)>, super::rounds::Coming)> {
        let coming = self.rounds.coming(self.queue);
        let mut rider = lane.and_then(|sub_line| self.rounds.take_rider(self.queue, sub_line));
        let mut answers: Vec<Option<(Result<Place>, u64)>> = vec![None; users.len()];
        for (sub_line, group) in by_sub_line(layout, users) {
            let keys = layout.keys(self.prefix, sub_line)?;
            let mut rest = group.as_slice();
            // The read riding on this sub-line's call, and its arguments.
            let mut carried = None;
            let mut count_args: Vec<String> = Vec::new();
            if lane == Some(sub_line) && rider.as_ref().is_some_and(|r| r.layout == *layout) {
                carried = rider.take();
            }
            if let Some(rider) = &carried {
                count_args.push(COUNT.to_owned());
                count_args.push(rider.tickets.len().to_string());
                count_args.extend(rider.tickets.iter().map(u64::to_string));
            }
            let mut leases = 0;
            // A block leased for the call, installed by its next call.
            let mut block: Option<[String; 4]> = None;
            // What the first call sends (see `Blocks`).
            let sending = self
                .blocks
                .sending(self.queue, sub_line, rest.len(), now_ms);
            // The first ticket of the last block this call leased.
            let mut leased_first = None;
            // A block leased ahead as sent, and the head's history then.
            let mut ahead: Option<([String; 4], String)> = None;
            if let Sending::Ahead(size) = sending {
                let (first, history) = self.lease_in(size, now_ms).await?;
                leased_first = Some(first);
                leases += 1;
                ahead = Some((block_args(first, size, now_ms, &history), history));
            }
            let mut probe = sending == Sending::FirstAlone;
            let all = rest.len().to_string();
            while !rest.is_empty() {
                let sent = match probe {
                    true => &rest[..1],
                    false => rest,
                };
                let mut names: Vec<&str> = Vec::with_capacity(sent.len() + count_args.len() + 6);
                if carried.is_some() {
                    names.extend(count_args.iter().map(String::as_str));
                }
                if let Some(block) = &block {
                    names.push(BLOCK);
                    names.extend(block.iter().map(String::as_str));
                } else if let Some((ahead, _)) = &ahead {
                    names.push(AHEAD);
                    names.extend(ahead.iter().map(String::as_str));
                }
                if probe {
                    names.extend([WANTED, all.as_str()]);
                }
                probe = false;
                names.extend(sent.iter().map(|&i| users[i].as_str()));
                let mut items = Reply::of(
                    self.value(
                        "enqueue",
                        ScriptCall::new(&self.scripts.enqueue_many, &keys, now_ms).args(&names),
                    )
                    .await?,
                    self.queue,
                )?
                .into_values();
                if carried.is_some()
                    && let Some(last) = items.pop_if(|last| tagged(last, b"counted"))
                    && let Some(rider) = carried.take()
                {
                    // Unread, the rider is dropped and its reader reads the
                    // sub-line itself: the joins stand either way.
                    if let Ok(part) = Part::read_counted(last, rider.tickets.len()) {
                        rider.answer(part);
                    }
                }
                // The first user alone found the block open: everyone goes
                // in the next call, as one run.
                if matches!(items.as_slice(), [only] if tagged(only, b"resend")) {
                    continue;
                }
                let left = match items.pop_if(|last| tagged(last, b"block")) {
                    Some(last) => Some(parse_block_left(last)?),
                    None => None,
                };
                if let Some((ahead, history)) = ahead.take()
                    && left.is_some_and(|left| left.ahead_unused)
                {
                    // Not this store's block: once given back, its numbers
                    // may be leased again by another replica.
                    leased_first = None;
                    // Everyone served stays served: a head that does not
                    // answer now leaves a gap, and the lease stops holding
                    // the watermark back τ + ε after it.
                    if let Err(error) = self.give_back(&ahead, &history, now_ms).await {
                        tracing::warn!(queue = %self.queue, %error, "a block leased ahead was not given back");
                    }
                }
                let lease = match items.pop_if(|last| tagged(last, b"lease")) {
                    Some(last) => {
                        let mut reply = Reply::new(last)?;
                        reply.string()?;
                        Some(reply.u64()?)
                    }
                    None => None,
                };
                let answered = parse_enqueued_runs(items, sent.len(), self.queue)?;
                if let Some(left) = left {
                    // Newcomers, as in a burst, were at least half the call:
                    // users already in line need no block.
                    let gave = left.given > 0 && 2 * left.given >= sent.len() as u64;
                    self.blocks
                        .note(self.queue, sub_line, left.block, gave, leased_first);
                }
                let count = answered.len();
                let all_sent = count == sent.len();
                for (&i, answer) in rest.iter().zip(answered) {
                    answers[i] = Some(answer);
                }
                rest = &rest[count..];
                match lease {
                    Some(size) if !rest.is_empty() => {
                        leases += 1;
                        if leases > MAX_LEASES {
                            return Err(Error::Internal(format!(
                                "sub-line {sub_line} asked for {MAX_LEASES} leases in one call"
                            )));
                        }
                        let (first, history) = self.lease_in(size, now_ms).await?;
                        leased_first = Some(first);
                        block = Some(block_args(first, size, now_ms, &history));
                    }
                    Some(_) => return Err(bad_reply("a lease asked with nobody left")),
                    None if !all_sent => {
                        return Err(bad_reply("enqueue answered for fewer users than asked"));
                    }
                    None => {}
                }
            }
        }
        let places = answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| (Err(bad_reply("a user left unanswered")), 0)))
            .collect();
        Ok((places, coming))
    }

    /// The places [`Self::join_many`] answered, each read as the round
    /// after its call finds the line.
    pub(super) async fn read_joined(
        &self,
        layout: &Layout,
        mut places: Vec<(Result<Place>, u64)>,
        now_ms: u64,
        coming: super::rounds::Coming,
    ) -> Result<Vec<Result<Place>>> {
        let read = places
            .iter_mut()
            .filter_map(|(place, k)| Some((place.as_mut().ok()?, *k)));
        self.read_positions(layout, read, now_ms, coming).await?;
        Ok(places.into_iter().map(|(place, _)| place).collect())
    }

    /// An admission over sub-lines (`AdmitBatch` with `due` false, the
    /// rate's admitter with `due` true), journalled at the head
    /// (`admission_head.lua`): an entry left unsettled by another admitter
    /// is finished first; the sub-lines' fronts give the cutoff; the pops
    /// take everyone at or below it; the head settles it.
    pub(super) async fn admit(
        &self,
        layout: &Layout,
        max_count: u32,
        request: Option<&RequestId>,
        due: bool,
        now_ms: u64,
    ) -> Result<Vec<Admitted>> {
        self.admit_until(layout, max_count, request, due, now_ms, Until::Settled)
            .await
    }

    /// [`Self::admit`], stopped where `until` says: a replica that stops
    /// after journalling its entry, for the test of the next admitter.
    pub(super) async fn admit_until(
        &self,
        layout: &Layout,
        max_count: u32,
        request: Option<&RequestId>,
        due: bool,
        now_ms: u64,
        until: Until,
    ) -> Result<Vec<Admitted>> {
        let request_arg = request.map_or("", RequestId::as_str);
        let keep = request
            .map_or(0, crate::store::batch_result_ttl_ms)
            .to_string();
        let due_arg = if due { "1" } else { "0" };
        for _ in 0..MAX_ATTEMPTS {
            let mut reply = self
                .on_head(&["begin", request_arg, due_arg], now_ms)
                .await?;
            match reply.string()?.as_str() {
                "done" => return parse_admitted(reply),
                unsettled @ ("finish" | "finish_named") => {
                    self.finish(layout, unsettled, reply, now_ms).await?;
                    continue;
                }
                "plan" => {}
                other => return Err(bad_reply(other)),
            }
            let version = reply.string()?;
            let watermark = reply.string()?;
            if let Until::SettledAfter(pause) = until {
                tokio::time::sleep(pause).await;
            }
            let limit = max_count.to_string();
            let mut active = 0;
            let mut below = Vec::new();
            // Every sub-line's front at once: the plan only needs them all
            // read after `version`.
            let args = [watermark.as_str(), limit.as_str()];
            let fronts = try_join_all((0..layout.shards as usize).map(|sub_line| {
                self.on_sub_line(
                    "admit",
                    &self.scripts.admission_front,
                    layout,
                    sub_line,
                    &args,
                    now_ms,
                )
            }))
            .await?;
            for (sub_line, mut front) in fronts.into_iter().enumerate() {
                active += front.u64()?;
                while front.remaining() > 0 {
                    below.push((front.u64()?, sub_line));
                }
            }
            below.sort_unstable();
            below.truncate(max_count as usize);
            // Each entry its own id, whatever its request: a request id
            // comes back once its result lapses, and a sub-line must not
            // take the pop of an earlier entry for this one. It names the
            // head's version it was planned at (`admission_pop.lua`).
            let id = format!("entry:{}:v{version}", crate::domain::instance_id());
            // Each candidate with its sub-line, so the plan journals how
            // many each pop may take.
            let (active, below): (String, Vec<String>) = (
                active.to_string(),
                below
                    .iter()
                    .map(|(ticket, sub_line)| format!("{ticket}:{sub_line}"))
                    .collect(),
            );
            let mut args = vec![
                "plan",
                version.as_str(),
                active.as_str(),
                limit.as_str(),
                due_arg,
                id.as_str(),
                request_arg,
                keep.as_str(),
            ];
            args.extend(below.iter().map(String::as_str));
            let mut plan = self.on_head(&args, now_ms).await?;
            match plan.string()?.as_str() {
                "again" => continue,
                "plan" => {}
                other => return Err(bad_reply(other)),
            }
            let room = plan.u64()?;
            let (cutoff, ttl, counts) = (plan.string()?, plan.string()?, plan.string()?);
            if room == 0 {
                return Ok(Vec::new());
            }
            if until == Until::Planned {
                return Ok(Vec::new());
            }
            return self.pops(layout, &id, &cutoff, &ttl, &counts, now_ms).await;
        }
        Err(Error::Unavailable(format!(
            "{MAX_ATTEMPTS} admissions of this queue came between the reads of this one"
        )))
    }

    /// `AdmitUsers` over sub-lines, one head entry like an admission from
    /// the line: the users' admissions and the admitted count read, the
    /// head plans who is admitted (`max_active` unless overridden), each
    /// planned user is admitted in their sub-line (`admit_named.lua`),
    /// and the head keeps the result under the request id.
    pub(super) async fn admit_users(
        &self,
        layout: &Layout,
        users: &[UserId],
        request: &RequestId,
        override_capacity: bool,
        now_ms: u64,
        until: Until,
    ) -> Result<Vec<NamedAdmission>> {
        let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let keep = crate::store::batch_result_ttl_ms(request).to_string();
        for _ in 0..MAX_ATTEMPTS {
            let mut args = vec!["begin_named", request.as_str()];
            args.extend(&names);
            let mut reply = self.on_head(&args, now_ms).await?;
            let version = match reply.string()?.as_str() {
                "done" => return parse_named(reply),
                "plan" => reply.string()?,
                unsettled => {
                    self.finish(layout, unsettled, reply, now_ms).await?;
                    continue;
                }
            };
            // Everyone's admission as it stands, lapsed ones ended first
            // by the fronts, and how many are admitted in all.
            let mut active = 0;
            for sub_line in 0..layout.shards as usize {
                active += self
                    .on_sub_line(
                        "admit_users",
                        &self.scripts.admission_front,
                        layout,
                        sub_line,
                        &["0", "0"],
                        now_ms,
                    )
                    .await?
                    .u64()?;
            }
            let mut held = Vec::with_capacity(users.len());
            for user in users {
                held.push(self.admission_of(layout, user).await?.unwrap_or_default());
            }
            let id = format!("entry:{}", crate::domain::instance_id());
            let active = active.to_string();
            let mut args = vec![
                "plan_named",
                version.as_str(),
                active.as_str(),
                if override_capacity { "1" } else { "0" },
                id.as_str(),
                request.as_str(),
                keep.as_str(),
            ];
            for (name, record) in names.iter().zip(&held) {
                args.push(name);
                args.push(record.as_str());
            }
            let mut plan = self.on_head(&args, now_ms).await?;
            if plan.string()? == "again" {
                continue;
            }
            let mut planned = Vec::with_capacity(users.len());
            for record in held {
                planned.push((plan.string()?, record));
            }
            if until == Until::Planned {
                return Ok(Vec::new());
            }
            return self
                .admit_planned(layout, &id, users, &planned, now_ms)
                .await;
        }
        Err(Error::Unavailable(format!(
            "{MAX_ATTEMPTS} admissions of this queue came between the reads of this one"
        )))
    }

    /// Finishes an entry another admitter left unsettled (`begin`'s
    /// answer `kind`, the rest in `reply`).
    async fn finish(
        &self,
        layout: &Layout,
        kind: &str,
        mut reply: Reply,
        now_ms: u64,
    ) -> Result<()> {
        match kind {
            "finish" => {
                let (id, cutoff, ttl) = (reply.string()?, reply.string()?, reply.string()?);
                let counts = reply.string()?;
                self.pops(layout, &id, &cutoff, &ttl, &counts, now_ms)
                    .await
                    .map(drop)
            }
            "finish_named" => {
                // The request's keep time, which the head settles by.
                let (id, _keep) = (reply.string()?, reply.string()?);
                let (mut users, mut planned) = (Vec::new(), Vec::new());
                while reply.remaining() > 0 {
                    users.push(UserId::parse(&reply.string()?).map_err(|e| bad_reply(&e))?);
                    planned.push((reply.string()?, reply.string()?));
                }
                self.admit_planned(layout, &id, &users, &planned, now_ms)
                    .await
                    .map(drop)
            }
            other => Err(bad_reply(other)),
        }
    }

    /// Carries out a planned `AdmitUsers` entry: each user admitted in
    /// their sub-line, or told the admission they held when planned (or,
    /// named twice, the one the call gave them first), or that there is
    /// no room; then the head settles it.
    async fn admit_planned(
        &self,
        layout: &Layout,
        id: &str,
        users: &[UserId],
        planned: &[(String, String)],
        now_ms: u64,
    ) -> Result<Vec<NamedAdmission>> {
        if planned.len() != users.len() {
            return Err(bad_reply("a plan for another number of users"));
        }
        let mut results: Vec<[String; 4]> = Vec::with_capacity(users.len());
        for (i, (user, (kind, held))) in users.iter().zip(planned).enumerate() {
            let result = match kind.as_str() {
                "admit" => self.admit_named(layout, id, user, now_ms).await?,
                "already" if held.is_empty() => {
                    let first = users[..i]
                        .iter()
                        .position(|earlier| earlier == user)
                        .and_then(|at| results.get(at))
                        .ok_or_else(|| bad_reply("an admission held by nobody"))?;
                    let mut result = first.clone();
                    result[0] = "already".to_owned();
                    result
                }
                "already" => {
                    let mut parts = held.splitn(3, ':').map(str::to_owned);
                    let mut part = || parts.next().unwrap_or_else(|| "0".to_owned());
                    ["already".to_owned(), part(), part(), part()]
                }
                _ => ["no_capacity".to_owned(), "0".into(), "0".into(), "0".into()],
            };
            results.push(result);
        }
        let count = users.len().to_string();
        let mut args = vec!["settle_named", id, count.as_str()];
        args.extend(users.iter().map(UserId::as_str));
        for result in &results {
            args.extend(result.iter().map(String::as_str));
        }
        // The head's answer is what the entry did, whoever settled it.
        let settled = parse_named(self.on_head(&args, now_ms).await?)?;
        self.forget_entry(layout, id, users).await;
        Ok(settled)
    }

    /// Replaces what the sub-lines kept for a settled entry's replays (its
    /// pops, or its named users' admissions), which they keep for a day
    /// so that no entry left unsettled outlives them, by a mark that the
    /// entry is settled: a pop of an admitter still carrying the entry out
    /// then takes nobody (the head answers it what the entry did), and the
    /// user lists do not stay a day. Best effort: what stays lapses.
    async fn forget_entry(&self, layout: &Layout, id: &str, users: &[UserId]) {
        let mut marks = Vec::new();
        for sub_line in 0..layout.shards as usize {
            let Ok(keys) = layout.keys(self.prefix, sub_line) else {
                return;
            };
            let mut fields = vec![id.to_owned()];
            fields.extend(
                users
                    .iter()
                    .filter(|user| layout.sub_line(user) == sub_line)
                    .map(|user| format!("{id}|{user}")),
            );
            let mut settled = redis::cmd("HSET");
            settled.arg(&keys[7]);
            for field in &fields {
                settled.arg(field).arg(SETTLED);
            }
            let scope = layout.tag(sub_line).unwrap_or(self.queue.as_str());
            marks.push((scope, settled));
        }
        // At once: a sub-line that does not answer holds the admission
        // (and the next one of this process, waiting for its turn) one
        // timeout, not one each.
        join_all(marks.iter().map(|(scope, settled)| async move {
            let _: Result<i64> = self.on_slot("admit", scope, settled).await;
        }))
        .await;
    }

    /// Admits one planned user in their sub-line, leasing a block when
    /// they need a ticket and the sub-line's is closed.
    async fn admit_named(
        &self,
        layout: &Layout,
        id: &str,
        user: &UserId,
        now_ms: u64,
    ) -> Result<[String; 4]> {
        let keys = layout.keys(self.prefix, layout.sub_line(user))?;
        let keep = POP_KEEP_MS.to_string();
        let keep = keep.as_str();
        for _ in 0..MAX_LEASES {
            let value = self
                .value(
                    "admit_users",
                    ScriptCall::new(&self.scripts.admit_named, &keys, now_ms).args(&[
                        id,
                        user.as_str(),
                        keep,
                    ]),
                )
                .await?;
            if tagged(&value, b"lease") {
                let mut reply = Reply::new(value)?;
                reply.string()?;
                self.lease(&keys, reply.u64()?, now_ms).await?;
                continue;
            }
            let mut reply = Reply::of(value, self.queue)?;
            let kind = reply.string()?;
            return Ok([
                kind,
                reply.u64()?.to_string(),
                reply.u64()?.to_string(),
                reply.u64()?.to_string(),
            ]);
        }
        Err(Error::Internal(format!(
            "{MAX_LEASES} leases for one user admitted by name"
        )))
    }

    /// The admission `user` holds, as their sub-line records it
    /// (`ticket:admitted at:expires at`).
    async fn admission_of(&self, layout: &Layout, user: &UserId) -> Result<Option<String>> {
        let sub_line = layout.sub_line(user);
        let keys = layout.keys(self.prefix, sub_line)?;
        self.on_slot(
            "admit_users",
            layout.tag(sub_line)?,
            redis::cmd("HGET").arg(&keys[4]).arg(user.as_str()),
        )
        .await
    }

    /// Gives `user` back the place `claim` vouches for
    /// (`restore_sub_line.lua` says the steps): the user's sub-line
    /// checked, every other sub-line asked whether the ticket waits there,
    /// the head's decision, then the user placed and every block closed.
    pub(super) async fn restore(
        &self,
        layout: &Layout,
        user: &UserId,
        claim: &PlaceClaim,
        now_ms: u64,
    ) -> Result<Restoration> {
        let own = layout.sub_line(user);
        let (ticket, issued) = (claim.ticket.to_string(), claim.issued_ms.to_string());
        let epoch = claim.epoch_ms.to_string();
        // The last argument: the receipt's epoch, or once the head decided,
        // its sequence.
        let step = |step: &'static str, sub_line: usize, last: String| {
            let (ticket, issued) = (&ticket, &issued);
            async move {
                self.restore_step(
                    layout,
                    step,
                    sub_line,
                    user,
                    [ticket, issued, &last],
                    &[],
                    now_ms,
                )
                .await
            }
        };
        let checked = step("check", own, epoch.clone()).await?.string()?;
        if checked != "free" && checked != "lapsed" {
            return refused_restore(checked.as_bytes());
        }
        for sub_line in (0..layout.shards as usize).filter(|&s| s != own) {
            if step("taken", sub_line, epoch.clone()).await?.flag()? {
                return Ok(Restoration::Refused(Refusal::NotGiven));
            }
        }
        if checked == "lapsed" {
            return Ok(Restoration::Refused(Refusal::Lapsed));
        }
        if claim.ticket == 0 {
            return Ok(Restoration::Refused(Refusal::NotGiven));
        }
        let mut lost = step("lost", own, epoch.clone()).await?;
        match lost.u64()? {
            0 => {}
            1 => return self.restored(layout, user, now_ms).await,
            // Lost while an admission that may have taken the ticket was
            // unsettled: the head's record of it decides.
            _ => {
                let entry = lost.string()?;
                let args = [
                    "admitted_by",
                    entry.as_str(),
                    user.as_str(),
                    ticket.as_str(),
                ];
                let mut answer = self.on_head(&args, now_ms).await?;
                let mut kind = answer.string()?;
                if kind == "finish" || kind == "finish_named" {
                    // Still unsettled: finished here, as the next admitter
                    // would (whoever settles it first decides what it did).
                    self.finish(layout, &kind, answer, now_ms).await?;
                    kind = self.on_head(&args, now_ms).await?.string()?;
                }
                match kind.as_str() {
                    "free" => {}
                    // Admitted by it, or its record is gone: refused, so
                    // nobody is admitted twice.
                    "admitted" | "unknown" => {
                        return Ok(Restoration::Refused(Refusal::NotGiven));
                    }
                    _ => {
                        return Err(Error::Unavailable(
                            "the admission under way when this place's sub-line was lost is still being settled; try again".into(),
                        ));
                    }
                }
                if step("lost_cleared", own, epoch.clone()).await?.flag()? {
                    return self.restored(layout, user, now_ms).await;
                }
            }
        }
        let head = keys::queue_keys(self.prefix, self.queue);
        let given_back = [
            keys::given_back_key(self.prefix, self.queue),
            keys::given_to_key(self.prefix, self.queue),
        ];
        let numbers = [claim.epoch_ms, claim.ticket, claim.head, claim.top].map(|n| n.to_string());
        let mut args: Vec<&str> = numbers.iter().map(String::as_str).collect();
        args.push(user.as_str());
        let decide = || {
            ScriptCall::new(&self.scripts.head_restore, &head, now_ms)
                .own_keys(&given_back)
                .args(&args)
        };
        let mut decided = Reply::of(self.value("restore", decide()).await?, self.queue)?;
        if decided.string()? != "given" {
            return Ok(Restoration::Refused(Refusal::NotGiven));
        }
        // A block still open, or leased before the decision and not yet
        // installed, may hold the very ticket given back: each is closed
        // for good, and only then is the answer whether the ticket was
        // given there final.
        let sequence = decided.u64()?.to_string();
        // One of a lost queue's places: its adoption as the decision left
        // it, for the user's sub-line to keep.
        let mut adoption = Vec::new();
        while decided.remaining() > 0 {
            adoption.push(decided.string()?);
        }
        // Carried out here, placed or refused: from now on the receipt
        // brought again is decided as any other (the head's sequence, or
        // its record of the lost line's places given back, now says no). A
        // failure before leaves the decision to be answered again to this
        // user alone.
        let carried_out = || async {
            let _: Result<i64> = self
                .on_slot(
                    "restore",
                    self.queue.as_str(),
                    redis::cmd("HDEL").arg(&given_back[1]).arg(claim.ticket),
                )
                .await;
        };
        for sub_line in (0..layout.shards as usize).filter(|&s| s != own) {
            if step("close", sub_line, sequence.clone()).await?.flag()? {
                carried_out().await;
                return Ok(Restoration::Refused(Refusal::NotGiven));
            }
        }
        let adoption: Vec<&str> = adoption.iter().map(String::as_str).collect();
        let mut placed = self
            .restore_step(
                layout,
                "place",
                own,
                user,
                [&ticket, &issued, &sequence],
                &adoption,
                now_ms,
            )
            .await?;
        match placed.u64()? {
            1 => {}
            0 => return Ok(Restoration::Holds),
            _ => {
                carried_out().await;
                return Ok(Restoration::Refused(Refusal::NotGiven));
            }
        }
        carried_out().await;
        self.restored(layout, user, now_ms).await
    }

    /// One step of a restore on sub-line `sub_line`
    /// (`restore_sub_line.lua`): ticket, issued, then the receipt's epoch
    /// or the head's sequence, then `more`.
    #[allow(clippy::too_many_arguments)]
    async fn restore_step(
        &self,
        layout: &Layout,
        step: &str,
        sub_line: usize,
        user: &UserId,
        [ticket, issued, last]: [&str; 3],
        more: &[&str],
        now_ms: u64,
    ) -> Result<Reply> {
        let mut args = vec![step, user.as_str(), ticket, issued, last];
        args.extend_from_slice(more);
        let keys = layout.keys(self.prefix, sub_line)?;
        let given_back = [keys::tagged_given_back_key(
            self.prefix,
            layout.tag(sub_line)?,
        )];
        self.run(
            "restore",
            ScriptCall::new(&self.scripts.restore_sub_line, &keys, now_ms)
                .own_keys(&given_back)
                .args(&args),
        )
        .await
    }

    /// The place given back to `user`, read over every sub-line.
    async fn restored(&self, layout: &Layout, user: &UserId, now_ms: u64) -> Result<Restoration> {
        self.places(layout, std::slice::from_ref(user), false, now_ms)
            .await?
            .pop()
            .flatten()
            .map(Restoration::Restored)
            .ok_or_else(|| bad_reply("a place given back is not there"))
    }

    /// Whether `user` holds an admission, as their sub-line has it
    /// (`check_admission.lua` with `args`, consuming nothing there: token
    /// ids are consumed at the head, `used_token.lua`).
    pub(super) async fn check_held(
        &self,
        layout: &Layout,
        user: &UserId,
        args: &[String],
        now_ms: u64,
    ) -> Result<crate::domain::AdmissionStatus> {
        let sub_line = layout.sub_line(user);
        let keys = layout.keys(self.prefix, sub_line)?;
        let used = keys::tagged_used_tokens_keys(self.prefix, layout.tag(sub_line)?);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let value = self
            .value(
                "check_admission",
                ScriptCall::new(&self.scripts.check_admission, &keys, now_ms)
                    .own_keys(&used)
                    .args(&args),
            )
            .await?;
        super::admission_status(&Reply::of(value, self.queue)?.string()?)
    }

    /// Runs a step of `admission_head.lua` at the head.
    async fn on_head(&self, args: &[&str], now_ms: u64) -> Result<Reply> {
        let head = keys::queue_keys(self.prefix, self.queue);
        let leases = [
            keys::leases_key(self.prefix, self.queue),
            keys::recently_admitted_key(self.prefix, self.queue),
        ];
        let step = ScriptCall::new(&self.scripts.admission_head, &head, now_ms)
            .own_keys(&leases)
            .args(args);
        Reply::of(self.value("admit", step).await?, self.queue)
    }

    /// What sub-line `sub_line` gave: the highest ticket, and its block
    /// while that is open (first ticket, lease time).
    async fn given_on(&self, layout: &Layout, sub_line: usize) -> Result<Given> {
        let keys = layout.keys(self.prefix, sub_line)?;
        let (first, end, at, lost_top): (Option<u64>, Option<u64>, Option<i64>, Option<u64>) = self
            .on_slot(
                "lease",
                layout.tag(sub_line)?,
                redis::cmd("HMGET")
                    .arg(&keys[0])
                    .arg("block_first")
                    .arg("block_end")
                    .arg("block_ms")
                    .arg("lost_top"),
            )
            .await?;
        // A place given back from a receipt may stand above every block.
        let highest: Vec<(String, u64)> = self
            .on_slot(
                "lease",
                layout.tag(sub_line)?,
                redis::cmd("ZRANGE")
                    .arg(&keys[2])
                    .arg(-1)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        Ok(Given {
            // A place given back raises a closed block's first ticket to
            // the sequence its decision left (`restore_sub_line.lua`).
            reached: end
                .unwrap_or(0)
                .saturating_sub(1)
                .max(first.unwrap_or(0))
                .max(lost_top.unwrap_or(0))
                .max(highest.first().map_or(0, |(_, ticket)| *ticket)),
            // A block closed by a place given back (lease time -1) holds
            // nothing back.
            open: match (first, at) {
                (Some(first), Some(at @ 0..)) => Some((first, at)),
                _ => None,
            },
        })
    }

    /// Resyncs a head that answered it is in another history than its
    /// last (`prelude.lua`, `same_history`): every sub-line's blocks read,
    /// then passed to a lease of nothing, which brings the sequence above
    /// them all and records the history; the call that was answered so
    /// runs again ([`Self::value`]). A sub-line that does not answer holds
    /// every lease back, as the head's own loss does.
    pub(super) async fn resync(&self, now_ms: u64) -> Result<()> {
        let layout = self.layout().await?;
        let mut reached = 0;
        let mut open = Vec::new();
        for sub_line in 0..layout.shards as usize {
            let given = self.given_on(&layout, sub_line).await?;
            reached = reached.max(given.reached);
            if let Some((first, at)) = given.open {
                open.extend([first.to_string(), at.to_string()]);
            }
        }
        let reached = reached.to_string();
        let mut args = vec!["0", reached.as_str()];
        args.extend(open.iter().map(String::as_str));
        let head = keys::queue_keys(self.prefix, self.queue);
        let leases = [keys::leases_key(self.prefix, self.queue)];
        let reply = self
            .value_once(
                "lease",
                ScriptCall::new(&self.scripts.lease, &head, now_ms)
                    .own_keys(&leases)
                    .args(&args),
            )
            .await?;
        Reply::of(reply, self.queue).map(drop)
    }

    /// A command on one slot, held back by the breaker of `scope` (its
    /// hash tag).
    async fn on_slot<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        scope: &str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        let mut conn = self
            .connector
            .connection(self.timeout, self.breaker)
            .await?;
        bounded(
            operation,
            self.timeout,
            guard(self.breaker, self.connector, &conn, Some(scope)),
            cmd.query_async(&mut conn),
        )
        .await
    }

    /// Runs an admission entry's pops on every sub-line (each taking
    /// everyone waiting at or below `cutoff`, or answering what it took
    /// before under `id`), then settles the entry at the head: everyone
    /// admitted, in ticket order.
    async fn pops(
        &self,
        layout: &Layout,
        id: &str,
        cutoff: &str,
        ttl: &str,
        counts: &str,
        now_ms: u64,
    ) -> Result<Vec<Admitted>> {
        let keep = POP_KEEP_MS.to_string();
        let counts: Vec<&str> = counts.split(',').collect();
        let mut taken: Vec<(String, u64, u64, u64)> = Vec::new();
        // At most what the plan counted in each sub-line, whatever joined
        // below the cutoff since. The pops at once: each is kept under the
        // entry's id, so one that fails is run again by whoever finishes
        // the entry, whichever ran.
        let planned: Vec<(usize, [&str; 5])> = (0..layout.shards as usize)
            .map(|sub_line| (sub_line, counts.get(sub_line).copied().unwrap_or("0")))
            .filter(|&(_, most)| most != "0")
            .map(|(sub_line, most)| (sub_line, [id, cutoff, ttl, keep.as_str(), most]))
            .collect();
        let pops = planned.iter().map(|(sub_line, args)| {
            self.on_sub_line(
                "admit",
                &self.scripts.admission_pop,
                layout,
                *sub_line,
                args,
                now_ms,
            )
        });
        for mut pop in try_join_all(pops).await? {
            while pop.remaining() > 0 {
                taken.push((pop.string()?, pop.u64()?, pop.u64()?, pop.u64()?));
            }
        }
        taken.sort_by_key(|&(_, ticket, _, _)| ticket);
        let numbers: Vec<[String; 3]> = taken
            .iter()
            .map(|(_, t, at, until)| [t.to_string(), at.to_string(), until.to_string()])
            .collect();
        let mut args = vec!["settle", id];
        for ((user, ..), [ticket, at, until]) in taken.iter().zip(&numbers) {
            args.extend([user.as_str(), ticket.as_str(), at.as_str(), until.as_str()]);
        }
        // The head's answer is what the entry did, whoever settled it.
        let settled = parse_admitted(self.on_head(&args, now_ms).await?)?;
        self.forget_entry(layout, id, &[]).await;
        Ok(settled)
    }

    /// Leases a block of `size` from the head and installs it in the
    /// sub-line whose keys are `keys`. Its τ counts from `now_ms`, the
    /// clock the join was read at, so a block is never open longer than τ
    /// after the joins it serves.
    async fn lease(&self, keys: &[String; QUEUE_KEYS], size: u64, now_ms: u64) -> Result<()> {
        let (first, history) = self.lease_in(size, now_ms).await?;
        self.install_block(keys, &block_args(first, size, now_ms, &history), now_ms)
            .await
            .map(drop)
    }

    /// Installs `block` ([`block_args`]) in the sub-line whose keys are
    /// `keys` (`install_block.lua`): whether it went in.
    pub(super) async fn install_block(
        &self,
        keys: &[String; QUEUE_KEYS],
        block: &[String; 4],
        now_ms: u64,
    ) -> Result<bool> {
        let args: Vec<&str> = block.iter().map(String::as_str).collect();
        self.run(
            "install_block",
            ScriptCall::new(&self.scripts.install_block, keys, now_ms).args(&args),
        )
        .await?
        .flag()
    }

    /// Gives back a block leased ahead that its call did not install
    /// (`give_back.lua`): the block as sent ([`block_args`]), in the
    /// head's `history`.
    async fn give_back(&self, block: &[String; 4], history: &str, now_ms: u64) -> Result<()> {
        let mut args: Vec<&str> = block[..3].iter().map(String::as_str).collect();
        args.push(history);
        self.on_head_leases("give_back", &self.scripts.give_back, &args, now_ms)
            .await
            .map(drop)
    }

    /// A head script whose own key is the head's leases (`lease.lua`,
    /// `give_back.lua`).
    async fn on_head_leases(
        &self,
        operation: &'static str,
        script: &redis::Script,
        args: &[&str],
        now_ms: u64,
    ) -> Result<Reply> {
        let head = keys::queue_keys(self.prefix, self.queue);
        let leases = [keys::leases_key(self.prefix, self.queue)];
        self.run(
            operation,
            ScriptCall::new(script, &head, now_ms)
                .own_keys(&leases)
                .args(args),
        )
        .await
    }

    /// [`Self::lease_in`]'s first ticket.
    #[cfg(test)]
    pub(super) async fn lease_block(&self, size: u64, now_ms: u64) -> Result<u64> {
        Ok(self.lease_in(size, now_ms).await?.0)
    }

    /// Leases a block of `size` from the head: its first ticket, and the
    /// head's history@the queue's epoch it was leased in.
    pub(super) async fn lease_in(&self, size: u64, now_ms: u64) -> Result<(u64, String)> {
        let size = size.to_string();
        let mut reply = self
            .on_head_leases("lease", &self.scripts.lease, &[size.as_str()], now_ms)
            .await?;
        Ok((reply.u64()?, reply.string()?))
    }

    /// Current places of `users` (`places.lua` on each sub-line), read as
    /// one step: positions and the line's length summed over the sub-lines
    /// after every lookup.
    pub(super) async fn places(
        &self,
        layout: &Layout,
        users: &[UserId],
        touch: bool,
        now_ms: u64,
    ) -> Result<Vec<Option<Place>>> {
        let coming = self.rounds.coming(self.queue);
        let mut answers: Vec<Option<Place>> = vec![None; users.len()];
        let touch_arg = if touch { "1" } else { "0" };
        for (sub_line, group) in by_sub_line(layout, users) {
            let keys = layout.keys(self.prefix, sub_line)?;
            for chunk in group.chunks(super::batch::PLACES_CHUNK) {
                let mut args = vec![touch_arg];
                args.extend(chunk.iter().map(|&i| users[i].as_str()));
                let items = self
                    .run(
                        "places",
                        ScriptCall::new(&self.scripts.places, &keys, now_ms).args(&args),
                    )
                    .await?
                    .into_values();
                if items.len() != chunk.len() {
                    return Err(bad_reply("places answered for another number of users"));
                }
                for (&i, item) in chunk.iter().zip(items) {
                    answers[i] = parse_place(item, self.queue)?;
                }
            }
        }
        let places = answers.iter_mut().flatten().map(|p| (p, 0));
        self.read_positions(layout, places, now_ms, coming).await?;
        Ok(answers)
    }

    /// Adds the head's part of a queue's figures to the sum of its
    /// sub-lines': the admissions it settled, and its rate merged in.
    pub(super) async fn add_head_stats(&self, stats: &mut QueueStats, now_ms: u64) -> Result<()> {
        let head = keys::queue_keys(self.prefix, self.queue);
        let mut reply = self
            .run(
                "stats",
                ScriptCall::new(&self.scripts.head_sample, &head, now_ms),
            )
            .await?;
        let mut sample = Sample::read(&mut reply)?;
        stats.admitted += reply.u64()?;
        sample.merge(&Sample::of(&stats.rate));
        sample.apply(&mut stats.rate);
        Ok(())
    }

    /// Sets every place's line length, and every waiting place's position,
    /// to their sums over the sub-lines as they stand now, and its rate to
    /// the queue's.
    ///
    /// Each place comes with how far into a run of newcomers it came (see
    /// `parse_enqueued_runs`), and the `k`-th of a run is counted as its
    /// run's first plus `k`. A run's tickets are consecutive tickets of
    /// one block, and a block belongs to one sub-line: no other sub-line
    /// holds a ticket between them, so every other sub-line counts the
    /// same below each of them. A burst's batch of a few runs therefore
    /// costs each sub-line a count per run, not per user. This is exact
    /// while the run is still waiting when the read comes, as it is when
    /// nothing else happens between the call and the read (the memory
    /// store's atomic step); a run member admitted or gone in between
    /// leaves those behind it in the run counted one place too far back,
    /// until their next read.
    async fn read_positions<'p>(
        &self,
        layout: &Layout,
        places: impl Iterator<Item = (&'p mut Place, u64)>,
        now_ms: u64,
        coming: super::rounds::Coming,
    ) -> Result<()> {
        let places: Vec<(&mut Place, u64)> = places.collect();
        if places.is_empty() {
            return Ok(());
        }
        let probe = |(place, k): &(&mut Place, u64)| match place.state {
            PlaceState::Waiting { .. } => Some(place.ticket.saturating_sub(*k)),
            _ => None,
        };
        let mut probes: Vec<u64> = places.iter().filter_map(probe).collect();
        probes.sort_unstable();
        probes.dedup();
        let view = self
            .shared_view(layout, probes.clone(), now_ms, coming)
            .await?;
        let counts: Vec<Option<u64>> = places
            .iter()
            .map(|entry| {
                probe(entry).and_then(|p| probes.binary_search(&p).ok().map(|i| view.below[i]))
            })
            .collect();
        for ((place, k), count) in places.into_iter().zip(counts) {
            view.sample.apply(&mut place.rate);
            place.waiting_count = view.in_line;
            // At least 1: a sub-line counted as last read may not hold the
            // place's own ticket yet.
            if let (PlaceState::Waiting { position }, Some(count)) = (&mut place.state, count) {
                *position = (count + k).max(1);
            }
            view.held.apply(place);
        }
        Ok(())
    }

    /// The queue as its sub-lines and head hold it now: everyone in line,
    /// the waiting at or below each of `tickets`, and the admission rate
    /// (`count_below.lua` on each sub-line, `head_sample.lua`).
    pub(super) async fn view(
        &self,
        layout: &Layout,
        tickets: &[u64],
        now_ms: u64,
    ) -> Result<LineView> {
        let mut view = LineView {
            in_line: 0,
            prequeued: 0,
            held: DrawHold::NONE,
            below: vec![0; tickets.len()],
            sample: self.head_sample(now_ms).await?,
        };
        for sub_line in 0..layout.shards as usize {
            view.add(&self.count_part(layout, sub_line, tickets, now_ms).await?);
        }
        Ok(view)
    }

    /// The head's admission rate sample (`head_sample.lua`).
    pub(super) async fn head_sample(&self, now_ms: u64) -> Result<Sample> {
        let head = keys::queue_keys(self.prefix, self.queue);
        Sample::read(
            &mut self
                .run(
                    "head_sample",
                    ScriptCall::new(&self.scripts.head_sample, &head, now_ms),
                )
                .await?,
        )
    }

    /// Sub-line `sub_line`'s part of a view (`count_below.lua`).
    pub(super) async fn count_part(
        &self,
        layout: &Layout,
        sub_line: usize,
        tickets: &[u64],
        now_ms: u64,
    ) -> Result<Part> {
        let tickets: Vec<String> = tickets.iter().map(u64::to_string).collect();
        let args: Vec<&str> = tickets.iter().map(String::as_str).collect();
        let keys = layout.keys(self.prefix, sub_line)?;
        let mut reply = self
            .run(
                "count_below",
                ScriptCall::new(&self.scripts.count_below, &keys, now_ms).args(&args),
            )
            .await?;
        Part::read(&mut reply, args.len())
    }

    /// A script of one sub-line with the user as its only argument
    /// (`leave.lua`): its flag.
    pub(super) async fn user_flag(
        &self,
        operation: &'static str,
        script: &redis::Script,
        layout: &Layout,
        user: &UserId,
        now_ms: u64,
    ) -> Result<bool> {
        let keys = layout.keys(self.prefix, layout.sub_line(user))?;
        self.run(
            operation,
            ScriptCall::new(script, &keys, now_ms).args(&[user.as_str()]),
        )
        .await?
        .flag()
    }

    /// Signs of life, each on the user's sub-line (`touch.lua`).
    pub(super) async fn touch(&self, layout: &Layout, users: &[UserId], now_ms: u64) -> Result<()> {
        for (sub_line, group) in by_sub_line(layout, users) {
            let keys = layout.keys(self.prefix, sub_line)?;
            for chunk in group.chunks(super::TOUCH_CHUNK) {
                let names: Vec<&str> = chunk.iter().map(|&i| users[i].as_str()).collect();
                self.run(
                    "touch",
                    ScriptCall::new(&self.scripts.touch, &keys, now_ms).args(&names),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Runs a head script with `args` after the clock.
    pub(super) async fn on_head_script(
        &self,
        operation: &'static str,
        script: &redis::Script,
        args: &[&str],
        now_ms: u64,
    ) -> Result<Reply> {
        let head = keys::queue_keys(self.prefix, self.queue);
        self.run(operation, ScriptCall::new(script, &head, now_ms).args(args))
            .await
    }

    /// Runs a script of sub-line `sub_line` with `args` after the clock.
    pub(super) async fn on_sub_line(
        &self,
        operation: &'static str,
        script: &redis::Script,
        layout: &Layout,
        sub_line: usize,
        args: &[&str],
        now_ms: u64,
    ) -> Result<Reply> {
        let keys = layout.keys(self.prefix, sub_line)?;
        self.run(operation, ScriptCall::new(script, &keys, now_ms).args(args))
            .await
    }
}

/// A restore's outcome other than a place (`restore.lua`,
/// `restore_sub_line.lua`).
pub(super) fn refused_restore(outcome: &[u8]) -> Result<Restoration> {
    match outcome {
        b"holds" => Ok(Restoration::Holds),
        b"lapsed" => Ok(Restoration::Refused(Refusal::Lapsed)),
        b"not_given" => Ok(Restoration::Refused(Refusal::NotGiven)),
        _ => Err(bad_reply("restore outcome")),
    }
}

/// A block leased from the head as a sub-line's call sends it (`BLOCK`,
/// `AHEAD`) and `install_block.lua` takes it: first ticket, end, leased
/// at, and the queue's epoch from `era` (the head's history@epoch, as
/// `lease.lua` answers), which a sub-line of the queue made again under
/// its name does not take.
pub(super) fn block_args(first: u64, size: u64, now_ms: u64, era: &str) -> [String; 4] {
    let epoch = era.rsplit_once('@').map_or("", |(_, epoch)| epoch);
    [
        first.to_string(),
        (first + size).to_string(),
        now_ms.to_string(),
        epoch.to_owned(),
    ]
}

/// What precedes, among an enqueue's users, a block to install first
/// (`enqueue_many.lua`): no user id holds a control character.
const BLOCK: &str = "\u{1}";

/// Marks the count of users a call of `enqueue_many.lua` stands for.
const WANTED: &str = "\u{2}";

/// What precedes a block leased ahead of a call (`enqueue_many.lua`).
const AHEAD: &str = "\u{3}";

/// What precedes the tickets of a read riding on a join call
/// (`enqueue_many.lua`).
const COUNT: &str = "\u{4}";

/// A sub-line's block as an enqueue call left it (`enqueue_many.lua`'s
/// last answer), and whether a block leased ahead went unused.
#[derive(Clone, Copy, Debug)]
struct BlockLeft {
    block: Option<Block>,
    ahead_unused: bool,
    /// Tickets the call gave.
    given: u64,
}

fn parse_block_left(value: Value) -> Result<BlockLeft> {
    let mut reply = Reply::new(value)?;
    reply.string()?;
    let (first, next, end) = (reply.u64()?, reply.u64()?, reply.u64()?);
    let leased_ms = reply.u64()?;
    let ahead_unused = reply.u64()? == 1;
    let given = reply.u64()?;
    let block = (first > 0).then_some(Block {
        first,
        next,
        end,
        leased_ms,
    });
    Ok(BlockLeft {
        block,
        ahead_unused,
        given,
    })
}

/// Whether a script answered that it found no queue.
fn no_queue(reply: &Value) -> bool {
    tagged(reply, b"no_queue")
}

/// Whether a head script answered that the head is in another history
/// than its last (`prelude.lua`, `same_history`).
fn resync_asked(reply: &Value) -> bool {
    tagged(reply, b"resync")
}

/// What a sub-line keeps for a settled entry in place of its record: a
/// replay answers it as having taken nobody.
const SETTLED: &str = r#"["settled"]"#;

/// How far an admission goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Until {
    /// To its end: the pops made and the entry settled.
    Settled,
    /// Only to its entry journalled at the head, as a replica that stops
    /// there leaves it.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    Planned,
    /// To its end, waiting this long between its begin and its reads, as
    /// a slow replica does.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    SettledAfter(std::time::Duration),
}

/// A queue over sub-lines as read at one moment.
pub(super) struct LineView {
    /// Everyone in line, over every sub-line.
    pub(super) in_line: u64,
    /// Of them, those pre-queued or being drawn.
    pub(super) prequeued: u64,
    /// The drawn tickets some sub-line may not have placed yet.
    pub(super) held: DrawHold,
    /// The waiting at or below each ticket asked about.
    pub(super) below: Vec<u64>,
    pub(super) sample: Sample,
}

impl LineView {
    /// Adds a sub-line's part, read for the same tickets.
    pub(super) fn add(&mut self, part: &Part) {
        self.in_line += part.in_line;
        self.prequeued += part.prequeued;
        self.held = self.held.and(part.held);
        self.sample.merge(&part.sample);
        for (count, part) in self.below.iter_mut().zip(&part.below) {
            *count += part;
        }
    }
}

/// One sub-line's part of a [`LineView`].
#[derive(Clone)]
pub(super) struct Part {
    pub(super) in_line: u64,
    pub(super) prequeued: u64,
    pub(super) held: DrawHold,
    pub(super) sample: Sample,
    pub(super) below: Vec<u64>,
}

impl Part {
    /// Reads a part for `tickets` tickets as `count_below.lua` answers it.
    fn read(reply: &mut Reply, tickets: usize) -> Result<Self> {
        let in_line = reply.u64()?;
        let prequeued = reply.u64()?;
        let held = DrawHold {
            above: reply.u64()?,
            through: reply.u64()?,
        };
        let sample = Sample::read(reply)?;
        let below = (0..tickets)
            .map(|_| reply.u64())
            .collect::<Result<Vec<u64>>>()?;
        Ok(Self {
            in_line,
            prequeued,
            held,
            sample,
            below,
        })
    }

    /// Reads a part that rode on a join call: `{'counted', part...}`.
    fn read_counted(value: Value, tickets: usize) -> Result<Self> {
        let mut reply = Reply::new(value)?;
        reply.string()?;
        Self::read(&mut reply, tickets)
    }
}

/// An admission rate sample's counts. The head's (the admissions it
/// settles) and each sub-line's (pass-through's own admissions, the
/// abandonments) together make the queue's.
#[derive(Clone, Copy, Default)]
pub(super) struct Sample {
    admitted: u64,
    span_ms: u64,
    recent: u64,
    abandoned: u64,
}

impl Sample {
    /// Reads a rate count, span, recent admissions and abandonments.
    fn read(reply: &mut Reply) -> Result<Self> {
        Ok(Self {
            admitted: reply.u64()?,
            span_ms: reply.u64()?,
            recent: reply.u64()?,
            abandoned: reply.u64()?,
        })
    }

    fn of(rate: &RateSample) -> Self {
        Self {
            admitted: rate.admitted,
            span_ms: rate.span_ms,
            recent: rate.recent,
            abandoned: rate.abandoned,
        }
    }

    /// Two samples' windows as one: counts add up, and the span reaches
    /// back to the older one's first admission.
    fn merge(&mut self, other: &Self) {
        self.admitted += other.admitted;
        self.span_ms = self.span_ms.max(other.span_ms);
        self.recent += other.recent;
        self.abandoned += other.abandoned;
    }

    /// Puts the queue's counts in a sample a sub-line answered (its
    /// configured rate is the queue's own).
    pub(super) fn apply(&self, rate: &mut RateSample) {
        rate.admitted = self.admitted;
        rate.span_ms = self.span_ms;
        rate.recent = self.recent;
        rate.abandoned = self.abandoned;
    }
}

/// Adds a sub-line's figures to the queue's (all but the rate's span
/// add up; the span reaches back to the older window's first admission).
pub(super) fn add_stats(stats: &mut QueueStats, part: &QueueStats) {
    stats.waiting += part.waiting;
    stats.active += part.active;
    stats.enqueued += part.enqueued;
    stats.admitted += part.admitted;
    stats.completed += part.completed;
    stats.expired += part.expired;
    stats.left += part.left;
    stats.abandoned += part.abandoned;
    stats.prequeued += part.prequeued;
    stats.cleared += part.cleared;
    let mut sample = Sample::of(&stats.rate);
    sample.merge(&Sample::of(&part.rate));
    sample.apply(&mut stats.rate);
    stats.flow.arrived += part.flow.arrived;
    for (sum, count) in stats.flow.waited.iter_mut().zip(&part.flow.waited) {
        *sum += count;
    }
}

/// Which node owns each slot, as ranges (first slot, last slot, node),
/// from a Cluster's `CLUSTER SLOTS` answer; the nodes numbered by their
/// first appearance.
pub(super) fn slot_owners(answer: &Value) -> Result<Vec<(u16, u16, usize)>> {
    let Value::Array(ranges) = answer else {
        return Err(bad_reply("CLUSTER SLOTS: not an array"));
    };
    let mut nodes: Vec<(Vec<u8>, i64)> = Vec::new();
    let mut owners = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err(bad_reply("CLUSTER SLOTS: a range is not an array"));
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return Err(bad_reply("CLUSTER SLOTS: a range without its master"));
        };
        let node = match (master.first(), master.get(1)) {
            (Some(Value::BulkString(host)), Some(Value::Int(port))) => (host.clone(), *port),
            _ => return Err(bad_reply("CLUSTER SLOTS: a master without its address")),
        };
        let index = match nodes.iter().position(|known| *known == node) {
            Some(index) => index,
            None => {
                nodes.push(node);
                nodes.len() - 1
            }
        };
        let slot = |n: i64| u16::try_from(n).map_err(|_| bad_reply("CLUSTER SLOTS: a slot"));
        owners.push((slot(*first)?, slot(*last)?, index));
    }
    Ok(owners)
}

/// The node owning `slot` by `owners` (0 for a slot none owns).
pub(super) fn owner_of(owners: &[(u16, u16, usize)], slot: u16) -> usize {
    owners
        .iter()
        .find(|(first, last, _)| (*first..=*last).contains(&slot))
        .map_or(0, |(_, _, node)| *node)
}

/// The indexes of `users` by sub-line, in sub-line order and, within
/// each, in the users' order.
fn by_sub_line(layout: &Layout, users: &[UserId]) -> Vec<(usize, Vec<usize>)> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); layout.shards as usize];
    for (i, user) in users.iter().enumerate() {
        groups[layout.sub_line(user)].push(i);
    }
    groups
        .into_iter()
        .enumerate()
        .filter(|(_, group)| !group.is_empty())
        .collect()
}

/// One script call: its keys, the clock and its other arguments.
#[derive(Clone)]
struct ScriptCall<'a> {
    script: &'a redis::Script,
    keys: Vec<&'a str>,
    now_ms: u64,
    args: Vec<&'a str>,
}

impl<'a> ScriptCall<'a> {
    fn new(script: &'a redis::Script, keys: &'a [String; QUEUE_KEYS], now_ms: u64) -> Self {
        Self {
            script,
            keys: keys.iter().map(String::as_str).collect(),
            now_ms,
            args: Vec::new(),
        }
    }

    fn own_keys(mut self, keys: &'a [String]) -> Self {
        self.keys.extend(keys.iter().map(String::as_str));
        self
    }

    fn args(mut self, args: &[&'a str]) -> Self {
        self.args.extend_from_slice(args);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Adoption, LineEvent};
    use crate::store::redis::tests::{
        connection_to, join_users, over_three_sub_lines, roll_back_head, store_on,
    };
    use crate::store::{QueueStore, RedisStore};

    /// `n` users named `{prefix}-{k}` for k from `from`, of sub-line 1 of
    /// three.
    fn of_sub_line_1(prefix: &str, from: usize, n: usize) -> Vec<UserId> {
        (from..)
            .map(|k| UserId::parse(&format!("{prefix}-{k}")).unwrap())
            .filter(|user| sub_line_of(user.as_str(), 3) == 1)
            .take(n)
            .collect()
    }

    /// Has Redis log every call from now on, and forget those before.
    fn log_every_call(conn: &mut redis::Connection) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(0)
            .query(conn)
            .unwrap();
        let _: () = redis::cmd("SLOWLOG").arg("RESET").query(conn).unwrap();
    }

    /// How many script calls Redis logged named each of `users`, and any
    /// of them.
    fn calls_naming(conn: &mut redis::Connection, users: &[UserId]) -> (Vec<usize>, usize) {
        let entries: Vec<Value> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query(conn)
            .unwrap();
        let calls: Vec<Vec<Vec<u8>>> = entries
            .into_iter()
            .filter_map(|entry| match entry {
                Value::Array(fields) => match fields.get(3) {
                    Some(Value::Array(args)) => Some(
                        args.iter()
                            .filter_map(|a| match a {
                                Value::BulkString(b) => Some(b.clone()),
                                _ => None,
                            })
                            .collect(),
                    ),
                    _ => None,
                },
                _ => None,
            })
            .filter(|args: &Vec<Vec<u8>>| {
                args.first()
                    .is_some_and(|c| c.eq_ignore_ascii_case(b"evalsha"))
            })
            .collect();
        let names =
            |args: &Vec<Vec<u8>>, user: &UserId| args.iter().any(|a| a == user.as_str().as_bytes());
        let each = users
            .iter()
            .map(|user| calls.iter().filter(|args| names(args, user)).count())
            .collect();
        let any = calls
            .iter()
            .filter(|args| users.iter().any(|user| names(args, user)))
            .count();
        (each, any)
    }

    /// The head's ticket sequence (0 before any lease).
    fn head_seq(conn: &mut redis::Connection, queue: &QueueId) -> u64 {
        redis::cmd("GET")
            .arg(&keys::queue_keys("t", queue)[1])
            .query::<Option<u64>>(conn)
            .unwrap()
            .unwrap_or(0)
    }

    /// The head's record of its leases.
    fn lease_records(conn: &mut redis::Connection, queue: &QueueId) -> Vec<String> {
        redis::cmd("ZRANGE")
            .arg(keys::leases_key("t", queue))
            .arg(0)
            .arg(-1)
            .query(conn)
            .unwrap()
    }

    /// Each user's name goes to Redis once, not once to be told to lease
    /// and again with the block. A batch within τ of its sub-line's block
    /// sends everyone at once; past it, after a burst's call from this
    /// store's block, with a block leased ahead (given back when not
    /// needed, so the tickets are those of a lease asked when needed);
    /// otherwise its first user alone, then everyone with the block the
    /// answer asked for. Everyone is placed in order.
    #[tokio::test]
    async fn a_burst_s_batch_leases_one_block_for_all_its_users_and_sends_each_once() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let layout = store.link(&queue).layout().await.unwrap();
        let of_one = |from, n| of_sub_line_1("burst", from, n);
        let mut conn = connection_to(&redis);
        let link = store.link(&queue);
        // Blocks leased for a call's 24 users, each at most twice what
        // growth alone gives: 2, 8 and 16 (growth alone: 1, 2, 4, 8 and
        // 16). The next, leased for 3 left of the call after, is 32, with
        // 29 left.
        let first = of_one(0, 24);
        let mut placed = link.enqueue_many(&layout, &first, 1_000).await.unwrap();
        assert_eq!(
            lease_records(&mut conn, &queue).len(),
            3,
            "leases for the call"
        );
        let first_more = of_one(500, 5);
        placed.extend(
            link.enqueue_many(&layout, &first_more, 1_000)
                .await
                .unwrap(),
        );
        // Within τ of that lease: everyone at once, from the open block.
        let second = of_one(1_000, 5);
        log_every_call(&mut conn);
        let within = link
            .enqueue_many(&layout, &second, 1_000 + TAU_MS - 1)
            .await
            .unwrap();
        assert_eq!(
            calls_naming(&mut conn, &second),
            (vec![1; 5], 1),
            "one call"
        );
        // Past τ, the last call having given tickets: a block leased
        // ahead, and everyone in one call.
        let third = of_one(2_000, 7);
        log_every_call(&mut conn);
        let past = link
            .enqueue_many(&layout, &third, 1_000 + TAU_MS)
            .await
            .unwrap();
        assert_eq!(
            lease_records(&mut conn, &queue).len(),
            5,
            "one lease for the call"
        );
        assert_eq!(calls_naming(&mut conn, &third), (vec![1; 7], 1), "one call");
        let tickets: Vec<u64> = [placed, within, past]
            .into_iter()
            .flatten()
            .map(|place| place.unwrap().ticket)
            .collect();
        assert!(tickets.windows(2).all(|w| w[0] < w[1]), "{tickets:?}");
        // Another replica leases now and gives one ticket. This store's
        // next batch brings a block leased ahead, but the script serves it
        // from the other's block, still open: one call, one run in the
        // line's log, and the block ahead given back, its lease dropped
        // and the sequence back where the other's lease left it.
        let other = store_on(&redis).await.with_sub_lines();
        let at = 1_000 + 2 * TAU_MS;
        other
            .enqueue(&queue, &of_one(3_000, 1)[0], at)
            .await
            .unwrap();
        let (leased, reached) = (
            lease_records(&mut conn, &queue),
            head_seq(&mut conn, &queue),
        );
        let fourth = of_one(4_000, 6);
        let last_seq = store
            .line_changes(&queue, 1, 0, 10_000, at)
            .await
            .unwrap()
            .events
            .last()
            .map_or(0, |(seq, _)| *seq);
        log_every_call(&mut conn);
        let placed = link.enqueue_many(&layout, &fourth, at).await.unwrap();
        assert_eq!(
            calls_naming(&mut conn, &fourth),
            (vec![1; 6], 1),
            "one call"
        );
        assert_eq!(
            (
                lease_records(&mut conn, &queue),
                head_seq(&mut conn, &queue)
            ),
            (leased, reached),
            "given back"
        );
        let changes = store
            .line_changes(&queue, 1, last_seq, 10_000, at)
            .await
            .unwrap();
        let first_ticket = placed[0].as_ref().unwrap().ticket;
        assert_eq!(
            changes
                .events
                .iter()
                .map(|(_, e)| e.clone())
                .collect::<Vec<_>>(),
            [LineEvent::JoinedRun {
                first_ticket,
                count: 6
            }],
            "one run"
        );
        // One newcomer past τ, after a call served from another replica's
        // block: a lease asked, of 14 (twice the 7 that block gave), of
        // which one is used. The next call's first user holds a
        // place, so the block leased ahead for its four users (4: twice the
        // one used, up to 4) is not the 3 its newcomers ask for: it is
        // given back, and they get 3 tickets after the last lease, as a
        // lease asked when needed gives them.
        let at = at + TAU_MS;
        link.enqueue_many(&layout, &of_one(5_000, 1), at)
            .await
            .unwrap();
        let reached = head_seq(&mut conn, &queue);
        let at = at + TAU_MS;
        let mut fifth = vec![fourth[0].clone()];
        fifth.extend(of_one(6_000, 3));
        let placed = link.enqueue_many(&layout, &fifth, at).await.unwrap();
        let tickets: Vec<u64> = placed.iter().map(|p| p.as_ref().unwrap().ticket).collect();
        assert_eq!(tickets[0], first_ticket, "a place held");
        assert_eq!(tickets[1..], [reached + 1, reached + 2, reached + 3]);
        assert_eq!(head_seq(&mut conn, &queue), reached + 3);
        // A call whose users mostly held places already (a crowd
        // refreshing its pages) leases nothing ahead after it: its next
        // call past τ sends its first user alone.
        let at = at + TAU_MS;
        let mut refreshing: Vec<UserId> = fourth[..3].to_vec();
        refreshing.extend(of_one(7_000, 1));
        link.enqueue_many(&layout, &refreshing, at).await.unwrap();
        let sixth = of_one(8_000, 4);
        log_every_call(&mut conn);
        link.enqueue_many(&layout, &sixth, at + TAU_MS)
            .await
            .unwrap();
        let (naming, _) = calls_naming(&mut conn, &sixth);
        assert_eq!(naming, [2, 1, 1, 1], "the first alone, then everyone");
        // Nor does a call of one user joining again at once, whose ticket
        // the current block gave: the call gave none.
        let at = at + 2 * TAU_MS;
        let again = of_one(9_000, 1);
        link.enqueue_many(&layout, &again, at).await.unwrap();
        link.enqueue_many(&layout, &again, at + 1).await.unwrap();
        let seventh = of_one(10_000, 4);
        log_every_call(&mut conn);
        link.enqueue_many(&layout, &seventh, at + 1 + TAU_MS)
            .await
            .unwrap();
        let (naming, _) = calls_naming(&mut conn, &seventh);
        assert_eq!(naming, [2, 1, 1, 1], "the first alone, then everyone");
    }

    /// A block given back takes the head's sequence back only in the
    /// history it was leased in, when the head still holds its lease and
    /// nothing was leased after it; its lease goes, in that history.
    #[tokio::test]
    async fn a_block_given_back_takes_the_sequence_back_only_where_nothing_came_after_its_lease() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let link = store.link(&queue);
        let mut conn = connection_to(&redis);
        let block = |first: u64, size: u64, at: u64| block_args(first, size, at, "");
        let state = |conn: &mut redis::Connection| {
            (head_seq(conn, &queue), lease_records(conn, &queue).len())
        };
        let before = head_seq(&mut conn, &queue);
        let (first, history) = link.lease_in(4, 1_000).await.unwrap();
        link.give_back(&block(first, 4, 1_000), &history, 1_000)
            .await
            .unwrap();
        assert_eq!(state(&mut conn), (before, 0));
        // Another lease after it: a gap.
        let (first, history) = link.lease_in(4, 2_000).await.unwrap();
        link.lease_block(2, 2_000).await.unwrap();
        link.give_back(&block(first, 4, 2_000), &history, 2_000)
            .await
            .unwrap();
        assert_eq!(state(&mut conn), (first + 5, 1));
        // A head without its lease (failed over to a replica that lacked
        // it, and leased the same numbers since) keeps its sequence.
        let (first, history) = link.lease_in(4, 3_000).await.unwrap();
        let _: () = redis::cmd("ZREM")
            .arg(keys::leases_key("t", &queue))
            .arg(format!("{first}:3000"))
            .query(&mut conn)
            .unwrap();
        link.give_back(&block(first, 4, 3_000), &history, 3_000)
            .await
            .unwrap();
        assert_eq!(head_seq(&mut conn, &queue), first + 3);
        // Nor one in another history than the lease's, whose record under
        // the same name may be another lease: it stays.
        let (first, history) = link.lease_in(4, 4_000).await.unwrap();
        let held = state(&mut conn);
        let other = history.replacen(|c: char| c.is_ascii_hexdigit(), "-", 1);
        link.give_back(&block(first, 4, 4_000), &other, 4_000)
            .await
            .unwrap();
        assert_eq!(state(&mut conn), held);
        // Nor for a queue made again under its name (another epoch).
        let (name, epoch) = history.split_once('@').unwrap();
        let epoch_after = format!("{name}@{}", epoch.parse::<u64>().unwrap() + 1);
        link.give_back(&block(first, 4, 4_000), &epoch_after, 4_000)
            .await
            .unwrap();
        assert_eq!(state(&mut conn), held);
        link.give_back(&block(first, 4, 4_000), &history, 4_000)
            .await
            .unwrap();
        assert_eq!(state(&mut conn), (first - 1, held.1 - 1), "the lease's own");
        // Nor below the sequence a sub-line made again was told as the top
        // of what it may have lost.
        let (first, history) = link.lease_in(4, 5_000).await.unwrap();
        let head = keys::queue_keys("t", &queue);
        let told = link
            .run(
                "remake_sub_line",
                ScriptCall::new(&link.scripts.read_seq, &head, 5_000),
            )
            .await
            .unwrap()
            .u64()
            .unwrap();
        assert_eq!(told, first + 3);
        link.give_back(&block(first, 4, 5_000), &history, 5_000)
            .await
            .unwrap();
        assert_eq!(head_seq(&mut conn, &queue), first + 3);
        // Nor below an opening's reservation (`draw_end`), which every
        // sub-line refuses blocks at or below.
        let (first, history) = link.lease_in(4, 6_000).await.unwrap();
        let _: () = redis::cmd("HSET")
            .arg(&head[0])
            .arg("draw_end")
            .arg(first + 3)
            .query(&mut conn)
            .unwrap();
        link.give_back(&block(first, 4, 6_000), &history, 6_000)
            .await
            .unwrap();
        assert_eq!(head_seq(&mut conn, &queue), first + 3);
    }

    /// The head drops leases a minute old as it leases, at most 64 a
    /// lease, and keeps the younger ones, which an admission's watermark
    /// may still wait for.
    #[tokio::test]
    async fn a_lease_drops_at_most_64_leases_a_minute_old_and_keeps_the_younger() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let link = store.link(&queue);
        let mut conn = connection_to(&redis);
        for at in 1_000..1_100 {
            link.lease_block(1, at).await.unwrap();
        }
        assert_eq!(lease_records(&mut conn, &queue).len(), 100);
        // A minute after the 36th: those 36 go.
        link.lease_block(1, 61_035).await.unwrap();
        let kept = lease_records(&mut conn, &queue);
        assert_eq!(kept.len(), 65, "{kept:?}");
        assert!(kept[0].ends_with(":1036"), "{kept:?}");
        // Long after all of them: 64 go, the rest at the next lease.
        link.lease_block(1, 200_000).await.unwrap();
        assert_eq!(lease_records(&mut conn, &queue).len(), 2);
        link.lease_block(1, 200_001).await.unwrap();
        let kept = lease_records(&mut conn, &queue);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(
            kept.iter()
                .all(|l| l.ends_with(":200000") || l.ends_with(":200001"))
        );
    }

    /// What a call sends follows the block the last call left: everyone
    /// while it is open; past it, a block leased ahead when that call gave
    /// tickets from a block this store leased, else the first user alone
    /// (everyone when alone). The last answer stands, and a sub-line's
    /// record is its own.
    #[test]
    fn a_call_sends_by_the_block_its_sub_line_s_last_call_left() {
        let blocks = Blocks::default();
        let queue = QueueId::parse("sale").unwrap();
        assert_eq!(blocks.sending(&queue, 1, 5, 1_000), Sending::FirstAlone);
        assert_eq!(blocks.sending(&queue, 1, 1, 1_000), Sending::All);
        let block = |first, next, end| {
            Some(Block {
                first,
                next,
                end,
                leased_ms: 1_000,
            })
        };
        blocks.note(&queue, 1, block(10, 14, 18), true, Some(10));
        assert_eq!(
            blocks.sending(&queue, 1, 5, 1_000 + TAU_MS - 1),
            Sending::All
        );
        // Past τ: twice the 4 used, or the 5 users of the call.
        assert_eq!(
            blocks.sending(&queue, 1, 5, 1_000 + TAU_MS),
            Sending::Ahead(8)
        );
        assert_eq!(
            blocks.sending(&queue, 1, 20, 1_000 + TAU_MS),
            Sending::Ahead(16)
        );
        // A call served from the block this store leased before.
        blocks.note(&queue, 1, block(10, 18, 18), true, None);
        assert_eq!(
            blocks.sending(&queue, 1, 5, 1_000),
            Sending::Ahead(16),
            "used up"
        );
        // Tickets from a block another replica leased.
        blocks.note(&queue, 1, block(30, 32, 40), true, None);
        assert_eq!(
            blocks.sending(&queue, 1, 5, 1_000 + TAU_MS),
            Sending::FirstAlone,
            "another replica's block"
        );
        blocks.note(&queue, 1, block(40, 40, 41), false, Some(40));
        assert_eq!(
            blocks.sending(&queue, 1, 5, 1_000 + TAU_MS),
            Sending::FirstAlone,
            "no tickets given"
        );
        // The block closed (a place given back), then the queue made
        // again, its numbers from 1 again.
        blocks.note(&queue, 1, None, true, None);
        assert_eq!(blocks.sending(&queue, 1, 5, 1_000), Sending::FirstAlone);
        blocks.note(&queue, 1, block(1, 3, 4), true, Some(1));
        assert_eq!(blocks.sending(&queue, 1, 5, 1_000), Sending::All);
        // Twice the 2 used, up to twice that for the 5 users.
        assert_eq!(
            blocks.sending(&queue, 1, 5, 1_000 + TAU_MS),
            Sending::Ahead(5)
        );
        assert_eq!(
            blocks.sending(&queue, 0, 5, 1_000),
            Sending::FirstAlone,
            "another sub-line"
        );
        blocks.forget(&queue);
        assert_eq!(
            blocks.sending(&queue, 1, 1, 1_000),
            Sending::All,
            "forgotten"
        );
        assert_eq!(blocks.sending(&queue, 1, 5, 1_000), Sending::FirstAlone);
    }

    /// A block this store leased ahead and gave back is not its own: when
    /// another replica leases the same numbers again (the sequence went
    /// back), calls served from that block lease nothing ahead after them.
    #[tokio::test]
    async fn a_block_given_back_and_leased_again_by_another_replica_is_not_this_store_s() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let layout = store.link(&queue).layout().await.unwrap();
        let of_one = |from, n| of_sub_line_1("again", from, n);
        let link = store.link(&queue);
        let other = store_on(&redis).await.with_sub_lines();
        let mut conn = connection_to(&redis);
        link.enqueue_many(&layout, &of_one(0, 8), 1_000)
            .await
            .unwrap();
        // The other replica's block, open when this store's next batch
        // comes with a block leased ahead: that block is given back, and
        // the sequence goes back.
        let t = 1_000 + TAU_MS;
        other.enqueue(&queue, &of_one(100, 1)[0], t).await.unwrap();
        let reached = head_seq(&mut conn, &queue);
        link.enqueue_many(&layout, &of_one(200, 3), t)
            .await
            .unwrap();
        assert_eq!(head_seq(&mut conn, &queue), reached, "given back");
        // The other replica leases those numbers again.
        let t = t + TAU_MS;
        other.enqueue(&queue, &of_one(300, 1)[0], t).await.unwrap();
        assert!(head_seq(&mut conn, &queue) > reached);
        // This store's batch served from that block...
        link.enqueue_many(&layout, &of_one(400, 2), t + 1)
            .await
            .unwrap();
        // ...is no burst of its own: past τ, the first user goes alone.
        let last = of_one(500, 3);
        log_every_call(&mut conn);
        link.enqueue_many(&layout, &last, t + 1 + TAU_MS)
            .await
            .unwrap();
        assert_eq!(calls_naming(&mut conn, &last).0, [2, 1, 1]);
    }

    /// A lease's record names its first ticket in full past 10^14, where
    /// Lua would write an exponent, so a give-back finds it by the ticket
    /// the store was answered.
    #[tokio::test]
    async fn a_lease_s_record_names_a_large_first_ticket_in_full() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let link = store.link(&queue);
        let mut conn = connection_to(&redis);
        let _: () = redis::cmd("SET")
            .arg(&keys::queue_keys("t", &queue)[1])
            .arg(100_000_000_000_000u64)
            .query(&mut conn)
            .unwrap();
        let (first, history) = link.lease_in(4, 1_000).await.unwrap();
        assert_eq!(first, 100_000_000_000_001);
        assert_eq!(lease_records(&mut conn, &queue), [format!("{first}:1000")]);
        let block = block_args(first, 4, 1_000, &history);
        link.give_back(&block, &history, 1_000).await.unwrap();
        assert!(lease_records(&mut conn, &queue).is_empty());
    }

    /// A block leased ahead that its sub-line refuses is given back: here a
    /// place given back between the lease and its call (set up as
    /// `restore_sub_line.lua`'s closing leaves it: the sub-line's first
    /// ticket raised to the head's sequence, told as the head's floor).
    /// Its lease no longer holds the watermark back, the sequence stays at
    /// the floor, and the call's users get tickets from the block leased
    /// after it. A give-back that fails (here Redis refuses the script its
    /// `ZREM`) leaves the lease to lapse, and fails none of the joins.
    #[tokio::test]
    async fn a_block_leased_ahead_that_its_sub_line_refuses_is_given_back() {
        for give_back_fails in [false, true] {
            let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
            let (store, queue) = over_three_sub_lines(&redis).await;
            let link = store.link(&queue);
            let layout = link.layout().await.unwrap();
            let mut conn = connection_to(&redis);
            let t = 1_000;
            link.enqueue_many(&layout, &of_sub_line_1("a", 0, 8), t)
                .await
                .unwrap();
            let users = of_sub_line_1("b", 0, 8);
            let at = t + TAU_MS;
            let Sending::Ahead(size) = store.blocks.sending(&queue, 1, users.len(), at) else {
                panic!("a burst's next batch leases ahead");
            };
            let floor = head_seq(&mut conn, &queue) + size;
            let _: () = redis::cmd("HSET")
                .arg(&layout.keys("t", 1).unwrap()[0])
                .arg(&[
                    ("block_first", floor),
                    ("block_next", floor),
                    ("block_end", floor),
                ])
                .arg("block_ms")
                .arg(-1)
                .query(&mut conn)
                .unwrap();
            let _: () = redis::cmd("HSET")
                .arg(&keys::queue_keys("t", &queue)[0])
                .arg("seq_floor")
                .arg(floor)
                .query(&mut conn)
                .unwrap();
            if give_back_fails {
                let _: () = redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg("default")
                    .arg("-zrem")
                    .query(&mut conn)
                    .unwrap();
            }
            let placed = link.enqueue_many(&layout, &users, at).await.unwrap();
            let mut tickets = std::collections::HashSet::new();
            for place in placed {
                let place = place.unwrap();
                assert!(place.ticket > floor, "{place:?} at or below {floor}");
                assert!(tickets.insert(place.ticket), "{place:?} twice");
            }
            let records = lease_records(&mut conn, &queue);
            let ahead = format!("{}:{at}", floor - size + 1);
            assert_eq!(records.contains(&ahead), give_back_fails, "{records:?}");
            assert!(
                records.contains(&format!("{}:{at}", floor + 1)),
                "{records:?}"
            );
            assert!(head_seq(&mut conn, &queue) > floor);
        }
    }

    /// Admissions of one queue asked at once through one store take their
    /// turn rather than start again each time another came between their
    /// reads and their plan: none is refused, and everyone is admitted
    /// once, in ticket order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admissions_asked_at_once_through_one_store_each_admit() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let (_, tickets) = join_users(&store, &queue, 160, 1_000).await;
        let store = std::sync::Arc::new(store);
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (store, queue) = (std::sync::Arc::clone(&store), queue.clone());
            calls.spawn(async move {
                let (mut admitted, mut refused) = (Vec::new(), Vec::new());
                for n in 0..10 {
                    match store.admit(&queue, 1, None, 2_000 + n).await {
                        Ok(users) => admitted.extend(users.into_iter().map(|a| a.admission.ticket)),
                        Err(error) => refused.push(error.to_string()),
                    }
                }
                (admitted, refused)
            });
        }
        let (mut admitted, mut refused) = (Vec::new(), Vec::new());
        while let Some(call) = calls.join_next().await {
            let (a, r) = call.unwrap();
            admitted.extend(a);
            refused.extend(r);
        }
        assert!(
            refused.is_empty(),
            "{} refused: {:?}",
            refused.len(),
            refused.first()
        );
        admitted.sort_unstable();
        let mut all: Vec<u64> = tickets.into_values().collect();
        all.sort_unstable();
        assert_eq!(admitted, all);
    }

    /// An admission that waited for its turn runs as of when it got it;
    /// the rate's admitter waits a quarter of the timeout at most, and
    /// then admits at its next pass.
    #[tokio::test]
    async fn an_admission_that_waited_for_its_turn_runs_as_of_then() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = std::sync::Arc::new(store_on(&redis).await.with_sub_lines());
        let queue = QueueId::parse("sale").unwrap();
        let mut config = QueueConfig::new(queue.clone()).created(0);
        config.shards = 3;
        config.admit_per_second = 1_000;
        store.create_queue(&config).await.unwrap();
        join_users(&store, &queue, 10, 1_000).await;
        let held = store.turns.take(&queue, store.timeout).await.unwrap();
        let asked = std::time::Instant::now();
        assert!(store.admit_due(&queue, 5, 3_000).await.unwrap().is_empty());
        assert!(asked.elapsed() >= store.timeout / 4);
        let waiting = {
            let (store, queue) = (std::sync::Arc::clone(&store), queue.clone());
            tokio::spawn(async move { store.admit(&queue, 1, None, 3_000).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
        let admitted = waiting.await.unwrap().unwrap();
        assert!(
            admitted[0].admission.admitted_at_ms >= 3_300,
            "{admitted:?}"
        );
        assert!(!store.admit_due(&queue, 5, 4_000).await.unwrap().is_empty());
    }

    /// A queue found gone (deleted through another replica) leaves no
    /// record of its sub-lines' blocks: one made again under its name
    /// numbers its tickets from 1 again.
    #[tokio::test]
    async fn a_queue_found_gone_leaves_no_record_of_its_blocks() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        join_users(&store, &queue, 10, 1_000).await;
        let recorded = |store: &RedisStore| store.blocks.0.lock().unwrap().contains_key(&queue);
        assert!(recorded(&store));
        let other = store_on(&redis).await.with_sub_lines();
        other.delete_queue(&queue).await.unwrap();
        let user = UserId::parse("late").unwrap();
        assert!(store.enqueue(&queue, &user, 2_000).await.is_err());
        assert!(!recorded(&store));
    }

    /// A block the head leased before the queue was deleted and made again
    /// under its name, brought to a sub-line only after, is not installed:
    /// its tickets come from the old sequence, which the new head numbers
    /// again from 1.
    #[tokio::test]
    async fn a_sub_line_made_with_its_queue_is_made_over_an_old_copy_written_meanwhile() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        join_users(&store, &queue, 30, 1_000).await;
        let old = store.get_queue(&queue).await.unwrap();
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        store.delete_queue(&queue).await.unwrap();
        let mut conn = connection_to(&redis);
        let keys = layout.keys("t", 1).unwrap();
        let epoch = |conn: &mut redis::Connection| -> Option<u64> {
            redis::cmd("HGET")
                .arg(&keys[0])
                .arg("created_at_ms")
                .query(conn)
                .unwrap()
        };
        // A replica making the sub-line again from the old head, read
        // before the deletion, writes its copy late; the queue's creator
        // then makes the sub-line.
        link.make_sub_line(&layout, 1, &old, &[], false)
            .await
            .unwrap();
        assert_eq!(epoch(&mut conn), Some(old.created_at_ms));
        let given_back = keys::tagged_given_back_key("t", layout.tag(1).unwrap());
        let _: i64 = redis::cmd("SADD")
            .arg(&given_back)
            .arg(format!("s:{}:7", old.created_at_ms))
            .query(&mut conn)
            .unwrap();
        let mut config = QueueConfig::new(queue.clone()).created(old.created_at_ms + 1_000);
        config.shards = 3;
        link.make_sub_line(&layout, 1, &config, &[], true)
            .await
            .unwrap();
        assert_eq!(epoch(&mut conn), Some(config.created_at_ms));
        let left: i64 = redis::cmd("EXISTS")
            .arg(&given_back)
            .query(&mut conn)
            .unwrap();
        assert_eq!(left, 0, "the old queue's places given back");
        // A copy written later still finds the new queue's, and keeps it.
        link.make_sub_line(&layout, 1, &old, &[], false)
            .await
            .unwrap();
        assert_eq!(epoch(&mut conn), Some(config.created_at_ms));
        let waiting: u64 = redis::cmd("ZCARD").arg(&keys[2]).query(&mut conn).unwrap();
        assert_eq!(waiting, 0);
    }

    /// Made again in the deleted queue's millisecond, the queue takes the
    /// next for its epoch, and a block of the deleted one is still told
    /// apart.
    #[tokio::test]
    async fn a_queue_made_again_in_its_deleted_millisecond_takes_a_later_epoch() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        join_users(&store, &queue, 30, 1_000).await;
        let old = store.get_queue(&queue).await.unwrap();
        let (first, era) = store.link(&queue).lease_in(8, 2_000).await.unwrap();
        store.delete_queue(&queue).await.unwrap();
        let made = store.create_queue(&old).await.unwrap();
        assert_eq!(made.created_at_ms, old.created_at_ms + 1);
        assert_eq!(
            store.get_queue(&queue).await.unwrap().created_at_ms,
            made.created_at_ms
        );
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        for sub_line in 0..3 {
            let keys = layout.keys("t", sub_line).unwrap();
            let epoch: u64 = redis::cmd("HGET")
                .arg(&keys[0])
                .arg("created_at_ms")
                .query(&mut connection_to(&redis))
                .unwrap();
            assert_eq!(epoch, made.created_at_ms, "sub-line {sub_line}");
        }
        let keys = layout.keys("t", 1).unwrap();
        let block = block_args(first, 8, 2_000, &era);
        assert!(!link.install_block(&keys, &block, 2_000).await.unwrap());
        // Deleted and made again once more, still in that millisecond.
        store.delete_queue(&queue).await.unwrap();
        let again = store.create_queue(&old).await.unwrap();
        assert_eq!(again.created_at_ms, old.created_at_ms + 2);
        // Deleted with its head lost, its layout known from a moment ago:
        // its sub-lines' epoch is the one kept.
        store.link(&queue).layout().await.unwrap();
        lose_head(&mut connection_to(&redis));
        store.delete_queue(&queue).await.unwrap_err();
        let last = store.create_queue(&old).await.unwrap();
        assert_eq!(last.created_at_ms, old.created_at_ms + 3);
        // Deleted with its head and its first sub-line lost: the other
        // sub-lines' epoch is the one kept.
        let layout = store.link(&queue).layout().await.unwrap();
        lose_head(&mut connection_to(&redis));
        let _: () = redis::cmd("DEL")
            .arg(&layout.keys("t", 0).unwrap()[..])
            .query(&mut connection_to(&redis))
            .unwrap();
        store.delete_queue(&queue).await.unwrap_err();
        let after = store.create_queue(&old).await.unwrap();
        assert_eq!(after.created_at_ms, old.created_at_ms + 4);
    }

    #[tokio::test]
    async fn a_block_leased_for_a_queue_deleted_and_made_again_is_not_installed() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        join_users(&store, &queue, 30, 1_000).await;
        let (first, era) = store.link(&queue).lease_in(8, 2_000).await.unwrap();
        assert!(first > 30, "{first}");
        store.delete_queue(&queue).await.unwrap();
        let mut config = QueueConfig::new(queue.clone()).created(2_000);
        config.shards = 3;
        store.create_queue(&config).await.unwrap();
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        let block = block_args(first, 8, 2_000, &era);
        let keys = layout.keys("t", 1).unwrap();
        let installed = link.install_block(&keys, &block, 2_000).await.unwrap();
        assert!(!installed, "a block of the queue deleted");
        // Nor brought with the call that asked for it, nor ahead of it,
        // where the store is told to give it back: nobody is served.
        let user = of(1).next().unwrap();
        let mut args: Vec<&str> = block.iter().map(String::as_str).collect();
        args.push(user.as_str());
        for marker in [BLOCK, AHEAD] {
            let mut sent = args.clone();
            sent.insert(0, marker);
            let mut items = Reply::of(
                link.value(
                    "enqueue",
                    ScriptCall::new(&link.scripts.enqueue_many, &keys, 2_001).args(&sent),
                )
                .await
                .unwrap(),
                &queue,
            )
            .unwrap()
            .into_values();
            let left = parse_block_left(items.pop().unwrap()).unwrap();
            assert_eq!(left.block, None, "{marker:?}");
            assert_eq!(left.ahead_unused, marker == AHEAD);
            assert!(matches!(items.as_slice(), [only] if tagged(only, b"lease")));
        }
        let place = store.enqueue(&queue, &user, 2_001).await.unwrap();
        assert!(place.ticket < first, "{place:?} from the old queue's block");
        // A lease of this queue is installed.
        let (first, era) = link.lease_in(8, 2_002).await.unwrap();
        let block = block_args(first, 8, 2_002, &era);
        assert!(link.install_block(&keys, &block, 2_002).await.unwrap());
    }

    /// A place given back, or an opening's reservation, tells the
    /// sub-lines the head's sequence as a floor: a block leased ahead
    /// before it and given back after keeps the sequence where it is,
    /// where going back would have blocks leased below the floor, which
    /// every sub-line refuses.
    #[tokio::test]
    async fn a_block_given_back_never_takes_the_sequence_below_a_floor_told_since() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue, first, history) = a_place_given_back_in_a_block_leased(&redis).await;
        let link = store.link(&queue);
        let mut conn = connection_to(&redis);
        let reached = head_seq(&mut conn, &queue);
        assert_eq!(reached, first + 7, "the decision leaves the sequence");
        let block = block_args(first, 8, 11_000, &history);
        link.give_back(&block, &history, 11_000).await.unwrap();
        assert_eq!(head_seq(&mut conn, &queue), reached);
        for user in of(1).skip(1).take(10) {
            store.enqueue(&queue, &user, 11_000).await.unwrap();
        }
    }

    /// The history the scripts check is Redis's own name for its dataset
    /// (`master_replid`), as the head and the sub-lines record it.
    #[tokio::test]
    async fn the_scripts_read_the_history_redis_names() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        join_users(&store, &queue, 30, 1_000).await;
        let mut conn = connection_to(&redis);
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut conn)
            .unwrap();
        let replid = info
            .lines()
            .find_map(|l| l.strip_prefix("master_replid:"))
            .unwrap()
            .trim()
            .to_string();
        let layout = store.link(&queue).layout().await.unwrap();
        let mut recorded: Vec<Option<String>> = Vec::new();
        recorded.push(
            redis::cmd("HGET")
                .arg(&keys::queue_keys("t", &queue)[0])
                .arg("head_history")
                .query(&mut conn)
                .unwrap(),
        );
        for sub_line in 0..3 {
            recorded.push(
                redis::cmd("HGET")
                    .arg(&layout.keys("t", sub_line).unwrap()[0])
                    .arg("sub_line_history")
                    .query(&mut conn)
                    .unwrap(),
            );
        }
        assert_eq!(recorded, vec![Some(replid); 4]);
    }

    /// A sub-line lost while an admission was journalled and not settled:
    /// the admission may have popped some of its users and settle them
    /// later, so their receipts wait for its record: those it admitted are
    /// not placed again, the others are. A receipt that finds the entry
    /// still unsettled finishes it first, as the next admitter would.
    #[tokio::test]
    async fn a_sub_line_lost_under_an_unsettled_admission_gives_back_only_whom_it_did_not_admit() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let (users, tickets) = join_users(&store, &queue, 60, 1_000).await;
        let mut conn = connection_to(&redis);
        let head = keys::queue_keys("t", &queue);
        let link = store.link(&queue);
        let of_lost = |user: &&UserId| sub_line_of(user.as_str(), 3) == 1;
        let claim = |user: &UserId| receipt_for(tickets[user]);
        let (entry, cutoff) = lose_under_an_entry(&store, &queue, 15, "first", &mut conn).await;
        let below: Vec<&UserId> = users
            .iter()
            .filter(of_lost)
            .filter(|user| tickets[*user] <= cutoff)
            .collect();
        assert!(below.len() >= 2, "{below:?}");
        // Its admitter comes back and settles the user its pops took on the
        // lost sub-line.
        let popped = below[0];
        settle_alone(&link, &entry, popped, tickets[popped]).await;
        let again = store
            .restore(&queue, popped, &claim(popped), 3_000)
            .await
            .unwrap();
        assert_eq!(
            again,
            Restoration::Refused(Refusal::NotGiven),
            "admitted twice"
        );
        for user in &below[1..] {
            let restored = store
                .restore(&queue, user, &claim(user), 3_000)
                .await
                .unwrap();
            let Restoration::Restored(place) = restored else {
                panic!("{user}: {restored:?}");
            };
            assert_eq!(place.ticket, tickets[*user]);
        }
        // Lost again under another entry that nobody comes back to: the
        // first receipt finishes it, and is given its place.
        let (_, cutoff_2) = lose_under_an_entry(&store, &queue, 40, "second", &mut conn).await;
        let returning = users
            .iter()
            .filter(of_lost)
            .find(|user| tickets[*user] > cutoff && tickets[*user] <= cutoff_2)
            .expect("a user of the lost sub-line under the second cutoff");
        let restored = store
            .restore(&queue, returning, &claim(returning), 3_000)
            .await
            .unwrap();
        assert!(matches!(restored, Restoration::Restored(_)), "{restored:?}");
        let admitting: Option<String> = redis::cmd("HGET")
            .arg(&head[0])
            .arg("admitting")
            .query(&mut conn)
            .unwrap();
        assert_eq!(admitting, None, "the entry finished");
    }

    /// The pop of entry `entry` (to its cutoff, at most `most`) on
    /// `sub_line`, as its admitter makes it (`admission_pop.lua`).
    async fn pop(
        store: &RedisStore,
        layout: &Layout,
        sub_line: usize,
        [entry, cutoff, most]: [&str; 3],
        now_ms: u64,
    ) -> Reply {
        store
            .link(&QueueId::parse("sale").unwrap())
            .on_sub_line(
                "admit",
                &store.scripts.admission_pop,
                layout,
                sub_line,
                &[entry, cutoff, "60000", "60000", most],
                now_ms,
            )
            .await
            .unwrap()
    }

    /// A receipt of the queue made at 0 for `ticket`, issued at 1.5 s.
    fn receipt_for(ticket: u64) -> PlaceClaim {
        PlaceClaim {
            epoch_ms: 0,
            ticket,
            head: 0,
            top: 0,
            issued_ms: 1_500,
        }
    }

    /// Settles `entry` as having admitted `user` at `ticket` alone, as its
    /// admitter coming back does with what its pops took.
    async fn settle_alone(link: &SubLineLink<'_>, entry: &str, user: &UserId, ticket: u64) {
        let ticket = ticket.to_string();
        link.on_head(
            &["settle", entry, user.as_str(), &ticket, "2000", "9000000"],
            2_200,
        )
        .await
        .unwrap();
    }

    /// Journals an admission of `count` and stops there (its admitter gone
    /// before its pops and settling), loses sub-line 1, and makes it again
    /// with a newcomer's join: the entry and its cutoff.
    async fn lose_under_an_entry(
        store: &RedisStore,
        queue: &QueueId,
        count: u32,
        name: &str,
        conn: &mut redis::Connection,
    ) -> (String, u64) {
        let link = store.link(queue);
        let layout = link.layout().await.unwrap();
        let request = RequestId::parse(name).unwrap();
        link.admit_until(&layout, count, Some(&request), false, 2_000, Until::Planned)
            .await
            .unwrap();
        let head = keys::queue_keys("t", queue);
        let entry: (String, u64) = redis::cmd("HMGET")
            .arg(&head[0])
            .arg("admitting")
            .arg("admitting_cutoff")
            .query(conn)
            .unwrap();
        let lost = keys::tagged_keys("t", "sale/3~1");
        let _: () = redis::cmd("UNLINK").arg(&lost[..]).query(conn).unwrap();
        let newcomer = (0..)
            .map(|n| UserId::parse(&format!("{name}-new-{n}")).unwrap())
            .find(|user| sub_line_of(user.as_str(), 3) == 1)
            .unwrap();
        store.enqueue(queue, &newcomer, 2_100).await.unwrap();
        entry
    }

    /// The admission's record decides those receipts for as long as they
    /// hold (a release time after the sub-line was made again), however
    /// long that is: here an hour's heartbeat, asked twenty minutes on.
    #[tokio::test]
    async fn an_unsettled_admission_s_record_lasts_as_long_as_the_lost_sub_line_s_receipts() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = QueueId::parse("sale").unwrap();
        let mut config = QueueConfig::new(queue.clone()).created(0);
        config.shards = 3;
        config.heartbeat_timeout = Duration::from_secs(3600);
        store.create_queue(&config).await.unwrap();
        let (users, tickets) = join_users(&store, &queue, 30, 1_000).await;
        let mut conn = connection_to(&redis);
        let (entry, cutoff) = lose_under_an_entry(&store, &queue, 15, "first", &mut conn).await;
        let below: Vec<&UserId> = users
            .iter()
            .filter(|user| sub_line_of(user.as_str(), 3) == 1 && tickets[*user] <= cutoff)
            .collect();
        assert!(below.len() >= 2, "{below:?}");
        let (popped, waiting) = (below[0], below[1]);
        settle_alone(&store.link(&queue), &entry, popped, tickets[popped]).await;
        let later = 2_200 + 20 * 60_000;
        let claim = |user: &UserId| receipt_for(tickets[user]);
        let refused = store
            .restore(&queue, popped, &claim(popped), later)
            .await
            .unwrap();
        assert_eq!(refused, Restoration::Refused(Refusal::NotGiven));
        let restored = store
            .restore(&queue, waiting, &claim(waiting), later)
            .await
            .unwrap();
        assert!(matches!(restored, Restoration::Restored(_)), "{restored:?}");
    }

    /// `sale` over three sub-lines, made again (at 10 s) from a lost line
    /// nobody saw: a receipt of it may vouch for a ticket below the new
    /// sequence.
    async fn made_again_from_a_lost_line(
        redis: &crate::testkit::RedisServer,
    ) -> (RedisStore, QueueId) {
        let store = store_on(redis).await.with_sub_lines();
        let queue = QueueId::parse("sale").unwrap();
        let mut config = QueueConfig::new(queue.clone()).created(10_000);
        config.shards = 3;
        config.adoption = Some(Adoption::default());
        store.create_queue(&config).await.unwrap();
        (store, queue)
    }

    /// A replica's copy reads each sub-line's log on from where it last
    /// read. A sub-line lost and made again keeps a new log: read on from
    /// the lost one's numbers, it answers incomplete (the copy reads the
    /// sub-line afresh), however much it logged since, rather than its
    /// changes from the middle.
    #[tokio::test]
    async fn a_copy_reading_on_from_a_lost_sub_line_s_log_reads_the_new_one_afresh() {
        // Today's clock: the new log's numbers pass 10^14.
        const NOW: u64 = 1_800_000_000_000;
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        join_users(&store, &queue, 60, NOW).await;
        let read = store
            .line_changes(&queue, 1, 0, 1_000, NOW + 100)
            .await
            .unwrap();
        assert!(read.complete);
        let cursor = read.events.last().map(|(seq, _)| *seq).unwrap();
        let mut conn = connection_to(&redis);
        let lost = keys::tagged_keys("t", "sale/3~1");
        let _: () = redis::cmd("UNLINK")
            .arg(&lost[..])
            .query(&mut conn)
            .unwrap();
        let mut joined = Vec::new();
        for user in of(1).take(cursor as usize + 10) {
            joined.push(
                store
                    .enqueue(&queue, &user, NOW + 1_000)
                    .await
                    .unwrap()
                    .ticket,
            );
        }
        let read = store
            .line_changes(&queue, 1, cursor, 1_000, NOW + 1_100)
            .await
            .unwrap();
        assert!(!read.complete, "{:?}", read.events.first());
        // Read afresh, then on: every change, numbered in full.
        let snapshot = store.line_snapshot(&queue, 1, 0, 1_000).await.unwrap();
        assert_eq!(snapshot.tickets, joined);
        let newcomer = of(1).nth(cursor as usize + 10).unwrap();
        let ticket = store
            .enqueue(&queue, &newcomer, NOW + 1_200)
            .await
            .unwrap()
            .ticket;
        let read = store
            .line_changes(&queue, 1, snapshot.seq, 1_000, NOW + 1_300)
            .await
            .unwrap();
        assert!(read.complete);
        let seqs: Vec<u64> = read.events.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, vec![snapshot.seq + 1], "{:?}", read.events);
        assert!(
            matches!(read.events[0].1, crate::domain::LineEvent::Joined { ticket: t, .. } | crate::domain::LineEvent::JoinedRun { first_ticket: t, .. } if t == ticket),
            "{:?}",
            read.events
        );
    }

    /// A head lost while an admission was under way (popped on one
    /// sub-line, not yet on the others) is made again from its sub-lines
    /// with each one's floor below everyone still waiting there: a
    /// sub-line lost after that gives back the places of its users the
    /// cut-short admission never took, and not of those it took.
    #[tokio::test]
    async fn a_head_made_again_from_its_sub_lines_under_a_cut_short_admission_keeps_its_waiting_places()
     {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let (users, tickets) = join_users(&store, &queue, 60, 1_000).await;
        let claim = |user: &UserId| receipt_for(tickets[user]);
        let mut conn = connection_to(&redis);
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        let request = RequestId::parse("cut-short").unwrap();
        link.admit_until(&layout, 15, Some(&request), false, 2_000, Until::Planned)
            .await
            .unwrap();
        let head = keys::queue_keys("t", &queue);
        let (entry, cutoff, counts): (String, u64, String) = redis::cmd("HMGET")
            .arg(&head[0])
            .arg("admitting")
            .arg("admitting_cutoff")
            .arg("admitting_counts")
            .query(&mut conn)
            .unwrap();
        let most = counts.split(',').next().unwrap().to_owned();
        let cutoff_arg = cutoff.to_string();
        pop(&store, &layout, 0, [&entry, &cutoff_arg, &most], 2_100).await;
        let kept = head_lost_and_made_again(&store, &mut conn, 3_000).await;
        assert_eq!(kept.created_at_ms, 0, "the same queue");
        // Its admitter comes back and carries on with sub-line 2: the
        // entry went with the head, and its pops take nobody now.
        let most_2 = counts.split(',').nth(2).unwrap().to_owned();
        assert_ne!(most_2, "0");
        let mut late = pop(&store, &layout, 2, [&entry, &cutoff_arg, &most_2], 3_050).await;
        assert_eq!(late.remaining(), 0, "{:?}", late.string());
        for user in users
            .iter()
            .filter(|user| sub_line_of(user.as_str(), 3) == 2 && tickets[*user] <= cutoff)
        {
            let place = store.place(&queue, user, 3_060).await.unwrap();
            assert!(
                matches!(
                    place,
                    Some(Place {
                        state: PlaceState::Waiting { .. },
                        ..
                    })
                ),
                "{user}: {place:?}"
            );
        }

        lose_sub_line(&store, &mut conn, 1, 3_100).await;
        let returning: Vec<&UserId> = users
            .iter()
            .filter(|user| sub_line_of(user.as_str(), 3) == 1 && tickets[*user] <= cutoff)
            .collect();
        assert!(!returning.is_empty());
        for user in returning {
            let restored = store
                .restore(&queue, user, &claim(user), 3_200)
                .await
                .unwrap();
            assert!(
                matches!(restored, Restoration::Restored(ref place) if place.ticket == tickets[user]),
                "{user}: {restored:?}"
            );
        }
        let popped = users
            .iter()
            .find(|user| sub_line_of(user.as_str(), 3) == 0 && tickets[*user] <= cutoff)
            .unwrap();
        let place = store.place(&queue, popped, 3_300).await.unwrap();
        assert!(
            matches!(
                place,
                Some(Place {
                    state: PlaceState::Admitted(_),
                    ..
                })
            ),
            "{popped}: {place:?}"
        );
        // The sub-line the cut-short admission did pop is lost in turn:
        // those it admitted there are not placed again (its floor is its
        // own cutoff, not the lowest ticket waiting anywhere), those
        // above the cutoff are.
        lose_sub_line(&store, &mut conn, 0, 3_400).await;
        let mut refused = 0;
        for user in users
            .iter()
            .filter(|user| sub_line_of(user.as_str(), 3) == 0)
        {
            let restored = store
                .restore(&queue, user, &claim(user), 3_500)
                .await
                .unwrap();
            if tickets[user] <= cutoff {
                assert_eq!(restored, Restoration::Refused(Refusal::NotGiven), "{user}");
                refused += 1;
            } else {
                assert!(
                    matches!(restored, Restoration::Restored(_)),
                    "{user}: {restored:?}"
                );
            }
        }
        assert!(refused > 0);
    }

    /// A place given back from a lost queue's receipt below the cutoff of
    /// admissions already settled (a lost line's old number) does not pull
    /// its sub-line's floor under those admitted: when the head is made
    /// again and then the sub-line is lost, those admitted there are not
    /// placed again and that place is, and the same after further makings
    /// again of the head (the sub-line made again keeps its floor, and a
    /// spared place nobody came back for stays spared).
    #[tokio::test]
    async fn a_place_given_back_below_the_admitted_is_spared_without_lowering_the_floor() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = made_again_from_a_lost_line(&redis).await;
        let old_claim = |ticket: u64| PlaceClaim {
            epoch_ms: 5_000,
            ticket,
            head: 0,
            top: 20,
            issued_ms: 9_000,
        };
        // The lost line's top raises the sequence: newcomers from 21 on.
        let first = of(0).next().unwrap();
        let restored = store
            .restore(&queue, &first, &old_claim(19), 10_050)
            .await
            .unwrap();
        assert!(matches!(restored, Restoration::Restored(_)), "{restored:?}");
        let mut tickets = HashMap::new();
        for user in of(1).skip(1).take(10).chain(of(2).take(10)) {
            let place = store.enqueue(&queue, &user, 10_100).await.unwrap();
            tickets.insert(user, place.ticket);
        }
        let admitted = store.admit(&queue, 12, None, 11_000).await.unwrap();
        assert_eq!(admitted.len(), 12);
        let returning = of(1).nth(20).unwrap();
        let restored = store
            .restore(&queue, &returning, &old_claim(7), 11_100)
            .await
            .unwrap();
        assert!(matches!(restored, Restoration::Restored(_)), "{restored:?}");
        let claim = |ticket: u64| PlaceClaim {
            epoch_ms: 10_000,
            ticket,
            head: 0,
            top: 0,
            issued_ms: 11_100,
        };
        let mut conn = connection_to(&redis);
        // The second time, its holder does not come back before the head
        // is lost again: the place stays spared for the third.
        for round in 0..3 {
            head_lost_and_made_again(&store, &mut conn, 12_000 + round).await;
            lose_sub_line(&store, &mut conn, 1, 12_100 + round).await;
            let now = 12_200 + round;
            if round != 1 {
                let place = store
                    .restore(&queue, &returning, &claim(7), now)
                    .await
                    .unwrap();
                assert!(
                    matches!(place, Restoration::Restored(ref p) if p.ticket == 7),
                    "round {round}: {place:?}"
                );
            }
            for a in admitted
                .iter()
                .filter(|a| sub_line_of(a.user.as_str(), 3) == 1)
            {
                let again = store
                    .restore(&queue, &a.user, &claim(a.admission.ticket), now)
                    .await
                    .unwrap();
                assert_eq!(again, Restoration::Refused(Refusal::NotGiven), "{}", a.user);
            }
        }
        // Admitted since, from the front: no longer spared.
        let next = store.admit(&queue, 1, None, 13_000).await.unwrap();
        assert_eq!(next[0].user, returning);
        lose_sub_line(&store, &mut conn, 1, 13_100).await;
        let again = store
            .restore(&queue, &returning, &claim(7), 13_200)
            .await
            .unwrap();
        assert_eq!(again, Restoration::Refused(Refusal::NotGiven));
    }

    /// A lease the lost head gave that its sub-line installs only after
    /// the head is made again gives no ticket a newer lease gives: the
    /// head made again starts its sequence that many blocks above what the
    /// sub-lines hold.
    #[tokio::test]
    async fn a_lease_of_the_lost_head_installed_after_it_is_made_again_gives_no_ticket_twice() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        join_users(&store, &queue, 30, 1_000).await;
        let link = store.link(&queue);
        // Leased for sub-line 2, not installed before the head is lost.
        let (first, era) = link.lease_in(64, 1_100).await.unwrap();
        let mut conn = connection_to(&redis);
        head_lost_and_made_again(&store, &mut conn, 2_000).await;
        let mut tickets = std::collections::HashSet::new();
        for user in of(0).take(40).chain(of(1).take(40)) {
            let place = store.enqueue(&queue, &user, 2_100).await.unwrap();
            assert!(
                tickets.insert(place.ticket),
                "ticket {} twice",
                place.ticket
            );
        }
        let keys = keys::tagged_keys("t", "sale/3~2");
        let block = block_args(first, 64, 2_200, &era);
        // The head made again keeps the queue's epoch, so the block goes in.
        assert!(link.install_block(&keys, &block, 2_200).await.unwrap());
        for user in of(2).take(40) {
            let place = store.enqueue(&queue, &user, 2_201).await.unwrap();
            assert!(
                tickets.insert(place.ticket),
                "ticket {} twice",
                place.ticket
            );
        }
    }

    /// A place of a lost queue given back from its receipt is given back
    /// once, even when the head that kept it so is lost in turn and made
    /// again from the sub-lines: the user's sub-line keeps the ticket, and
    /// the head made again takes it.
    #[tokio::test]
    async fn a_lost_queue_s_place_given_back_is_not_given_again_by_a_head_made_again() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = made_again_from_a_lost_line(&redis).await;
        let user = of(1).next().unwrap();
        let claim = PlaceClaim {
            epoch_ms: 5_000,
            ticket: 7,
            head: 0,
            top: 20,
            issued_ms: 9_000,
        };
        // This receipt saw the lost line's head at 5: everyone below had
        // been admitted or had left.
        let claim = PlaceClaim { head: 5, ..claim };
        let restored = store.restore(&queue, &user, &claim, 10_100).await.unwrap();
        assert!(matches!(restored, Restoration::Restored(_)), "{restored:?}");
        assert!(store.leave(&queue, &user, 10_200).await.unwrap());
        let mut conn = connection_to(&redis);
        let kept = head_lost_and_made_again(&store, &mut conn, 10_300).await;
        assert_eq!(kept.created_at_ms, 10_000, "the same queue");
        let again = store.restore(&queue, &user, &claim, 10_400).await.unwrap();
        assert_eq!(again, Restoration::Refused(Refusal::NotGiven));
        // Below the head that receipt saw: still not given back.
        let below = of(0).next().unwrap();
        let claim = PlaceClaim {
            ticket: 3,
            head: 0,
            ..claim
        };
        let refused = store.restore(&queue, &below, &claim, 10_450).await.unwrap();
        assert_eq!(refused, Restoration::Refused(Refusal::NotGiven));
        // Another of the lost line's places is still given back.
        let other = of(2).next().unwrap();
        let claim = PlaceClaim { ticket: 8, ..claim };
        let restored = store.restore(&queue, &other, &claim, 10_500).await.unwrap();
        assert!(matches!(restored, Restoration::Restored(_)), "{restored:?}");
    }

    /// An admission planned before the head was lost does not go on with
    /// the head made again: its plan finds another version there.
    #[tokio::test]
    async fn an_admission_begun_before_the_head_was_lost_plans_again() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        join_users(&store, &queue, 30, 1_000).await;
        let link = store.link(&queue);
        let mut begun = link.on_head(&["begin", "", "0"], 2_000).await.unwrap();
        assert_eq!(begun.string().unwrap(), "plan");
        let version = begun.string().unwrap();
        let mut conn = connection_to(&redis);
        head_lost_and_made_again(&store, &mut conn, 2_100).await;
        let mut planned = link
            .on_head(
                &[
                    "plan", &version, "0", "10", "0", "entry", "", "60000", "1:0",
                ],
                2_200,
            )
            .await
            .unwrap();
        assert_eq!(planned.string().unwrap(), "again", "version {version}");
    }

    /// A queue nobody declared, over three sub-lines, whose head alone is
    /// lost comes back from them, even where sub-lines of an earlier queue
    /// of the same name over two still stand, and only as the queue of
    /// the epoch lost; not once it is deleted.
    #[tokio::test]
    async fn a_queue_is_made_again_from_its_own_sub_lines_and_not_after_a_deletion() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = QueueId::parse("sale").unwrap();
        let mut conn = connection_to(&redis);
        let mut earlier = QueueConfig::new(queue.clone()).created(0);
        earlier.shards = 2;
        store.create_queue(&earlier).await.unwrap();
        lose_head(&mut conn);
        let mut config = QueueConfig::new(queue.clone()).created(1_000);
        config.shards = 3;
        store.create_queue(&config).await.unwrap();
        let (users, tickets) = join_users(&store, &queue, 30, 1_100).await;
        lose_head(&mut conn);
        // Not as a queue of another epoch than the one lost.
        assert_eq!(
            store.remake_from_parts(&queue, 999, 2_000).await.unwrap(),
            None
        );
        let made = store.remake_from_parts(&queue, 1_000, 2_000).await.unwrap();
        assert_eq!(made.map(|q| (q.created_at_ms, q.shards)), Some((1_000, 3)));
        for user in &users {
            let place = store.place(&queue, user, 2_100).await.unwrap().unwrap();
            assert_eq!(place.ticket, tickets[user]);
        }
        lose_head(&mut conn);
        // A deletion that raced a making again found the queue lost just
        // before: its mark written, its sub-lines not dropped yet. The
        // making again does not make the head over the mark.
        let _: () = redis::cmd("SET")
            .arg("t:{sale}:deleted")
            .arg(2_500)
            .query(&mut conn)
            .unwrap();
        let mut again = config.clone();
        again.adoption = Some(Adoption::default());
        let made = store.create_queue(&again).await;
        assert!(
            matches!(made, Err(Error::QueueAlreadyExists(_))),
            "{made:?}"
        );
        assert!(store.queue_lost(&queue).await.is_ok_and(|lost| !lost));
        assert_eq!(
            store.remake_from_parts(&queue, 1_000, 3_000).await.unwrap(),
            None
        );
        // The deletion, by a replica that never read the layout: the queue
        // not found, and its sub-lines, and those of the earlier queue,
        // gone with it.
        let deleting = store_on(&redis).await.with_sub_lines();
        let deleted = deleting.delete_queue(&queue).await;
        assert!(
            matches!(deleted, Err(Error::QueueNotFound(_))),
            "{deleted:?}"
        );
        let left: Vec<String> = redis::cmd("KEYS")
            .arg("t:{sale/*")
            .query(&mut conn)
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    /// A head made again whose resync fails (its leases unusable for a
    /// moment) is made all the same, as the queue that was lost, and
    /// resyncs at its first lease: the next join takes a ticket above
    /// every one given.
    #[tokio::test]
    async fn a_head_made_again_stands_when_its_resync_fails() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = QueueId::parse("sale").unwrap();
        let mut conn = connection_to(&redis);
        let mut config = QueueConfig::new(queue.clone()).created(1_000);
        config.shards = 3;
        store.create_queue(&config).await.unwrap();
        let (_, tickets) = join_users(&store, &queue, 30, 1_100).await;
        lose_head(&mut conn);
        let leases = keys::leases_key("t", &queue);
        let _: () = redis::cmd("SET")
            .arg(&leases)
            .arg("not a set")
            .query(&mut conn)
            .unwrap();
        let mut again = config.clone();
        again.created_at_ms = 2_000;
        again.adoption = Some(Adoption::default());
        let made = store.create_queue(&again).await;
        assert_eq!(made.map(|q| q.created_at_ms).ok(), Some(1_000));
        assert!(store.queue_lost(&queue).await.is_ok_and(|lost| !lost));
        let _: () = redis::cmd("DEL").arg(&leases).query(&mut conn).unwrap();
        let newcomer = UserId::parse("newcomer").unwrap();
        let place = store.enqueue(&queue, &newcomer, 2_100).await.unwrap();
        assert!(tickets.values().all(|&ticket| ticket < place.ticket));
    }

    /// Loses the head of `sale` (its keys gone, as with its node back
    /// empty), then makes the queue over three sub-lines again at `now_ms`
    /// as its declaration does: what it made.
    async fn head_lost_and_made_again(
        store: &RedisStore,
        conn: &mut redis::Connection,
        now_ms: u64,
    ) -> QueueConfig {
        lose_head(conn);
        let mut config = QueueConfig::new(QueueId::parse("sale").unwrap()).created(now_ms);
        config.shards = 3;
        config.adoption = Some(Adoption::default());
        store.create_queue(&config).await.unwrap()
    }

    /// Loses sub-line `sub_line` of `sale`'s three, and makes it again
    /// with a newcomer's join at `now_ms`.
    async fn lose_sub_line(
        store: &RedisStore,
        conn: &mut redis::Connection,
        sub_line: u32,
        now_ms: u64,
    ) {
        let tag = format!("sale/3~{sub_line}");
        let lost = keys::tagged_keys("t", &tag);
        let given_back = keys::tagged_given_back_key("t", &tag);
        let _: () = redis::cmd("UNLINK")
            .arg(&lost[..])
            .arg(given_back)
            .query(conn)
            .unwrap();
        let newcomer = of(sub_line).next().unwrap();
        let queue = QueueId::parse("sale").unwrap();
        store.enqueue(&queue, &newcomer, now_ms).await.unwrap();
    }

    /// The head of `sale` gone, its sub-lines standing.
    fn lose_head(conn: &mut redis::Connection) {
        let gone: Vec<String> = redis::cmd("KEYS").arg("t:{sale}:*").query(conn).unwrap();
        let _: () = redis::cmd("UNLINK").arg(&gone).query(conn).unwrap();
    }

    /// Users of sub-line `sub_line` of three, one after another.
    fn of(sub_line: u32) -> impl Iterator<Item = UserId> {
        (0..)
            .map(move |n| UserId::parse(&format!("u{sub_line}-{n}")).unwrap())
            .filter(move |user| sub_line_of(user.as_str(), 3) == sub_line)
    }

    /// A head rolled back after a place was given back from a receipt of a
    /// lost line (which raised every sub-line's first ticket to the
    /// sequence the decision left): the resync leases above that, so joins
    /// go on.
    #[tokio::test]
    async fn a_head_rolled_back_after_a_place_given_back_leases_above_its_closing() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = made_again_from_a_lost_line(&redis).await;
        for sub_line in 0..3 {
            store
                .enqueue(&queue, &of(sub_line).next().unwrap(), 11_000)
                .await
                .unwrap();
        }
        let returning = of(0).nth(1).unwrap();
        let claim = PlaceClaim {
            epoch_ms: 5_000,
            ticket: 400,
            head: 0,
            top: 500,
            issued_ms: 11_000,
        };
        let restored = store
            .restore(&queue, &returning, &claim, 11_000)
            .await
            .unwrap();
        assert!(matches!(restored, Restoration::Restored(_)), "{restored:?}");
        roll_back_head(&mut connection_to(&redis), &queue);
        for user in of(1).skip(1).take(5) {
            let place = store.enqueue(&queue, &user, 12_000).await.unwrap();
            assert!(place.ticket > 500, "{user}: {}", place.ticket);
        }
    }

    /// A queue made again from a lost line, a block of 8 leased at its
    /// head (first ticket, and the head's history as leased), and then a
    /// receipt's place given back at the block's third ticket, which
    /// leaves the head's sequence where the lease left it.
    async fn a_place_given_back_in_a_block_leased(
        redis: &crate::testkit::RedisServer,
    ) -> (RedisStore, QueueId, u64, String) {
        let (store, queue) = made_again_from_a_lost_line(redis).await;
        store
            .enqueue(&queue, &of(1).next().unwrap(), 11_000)
            .await
            .unwrap();
        let (first, history) = store.link(&queue).lease_in(8, 11_000).await.unwrap();
        let claim = PlaceClaim {
            epoch_ms: 5_000,
            ticket: first + 2,
            head: 0,
            top: 0,
            issued_ms: 11_000,
        };
        let restored = store
            .restore(&queue, &of(0).next().unwrap(), &claim, 11_000)
            .await
            .unwrap();
        assert!(matches!(restored, Restoration::Restored(_)), "{restored:?}");
        (store, queue, first, history)
    }

    /// A join's lease taken from the head before a place is given back, and
    /// installed only after, could hold the very ticket given back: the
    /// restore's closing raises the sub-line's first ticket to the head's
    /// sequence, so that block is not installed and the join leases again.
    #[tokio::test]
    async fn a_lease_taken_before_a_place_is_given_back_is_not_installed_after_it() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        // Sub-line 1's next join leased this block, and has not installed it.
        let (store, queue, first, era) = a_place_given_back_in_a_block_leased(&redis).await;
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        let block = block_args(first, 8, 11_000, &era);
        let keys = layout.keys("t", 1).unwrap();
        let installed = link.install_block(&keys, &block, 11_000).await.unwrap();
        assert!(!installed, "a lease older than the place given back");
        for user in of(1).skip(1).take(10) {
            let place = store.enqueue(&queue, &user, 11_000).await.unwrap();
            assert_ne!(
                place.ticket,
                first + 2,
                "{user} given the ticket given back"
            );
        }
    }
}
