//! The follow loop: each followed queue's task keeps the copy of its line
//! up to date from the store (a snapshot in chunks, then the log), records
//! presence, and sends each watcher its place when what it sees changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::line::Line;
use super::lookup::Pollers;
use super::pace::next_moment;
use super::presence::{self, Presence};
use super::view::View;
use super::{QueueWatch, WatchHub, Watcher};
use crate::domain::{LineEvent, LineSnapshot, LineSummary, Place, PlaceState, QueueId, UserId};
use crate::{Error, Result};

/// Consecutive failed refreshes after which streams end with `UNAVAILABLE`
/// (clients reconnect; places are kept).
const MAX_FAILED_REFRESHES: u32 = 8;

/// Log entries read per call while catching up: one short store call each.
const CHANGES_PER_READ: u32 = 2_000;

/// Reads per refresh before giving up on catching up this time.
const MAX_CATCH_UP_READS: usize = 50;

/// Tickets per snapshot chunk: one short store call each (a few
/// milliseconds of Redis time), however long the line.
const SNAPSHOT_CHUNK: u32 = 2_000;

/// Least time between two refreshes that other instances' announcements
/// ask for. Every replica's worker admits and announces up to ten times a
/// second, so with ten replicas each would hear of ninety changes a second
/// to a queue, and pass over all its streams as often; at most twenty-five
/// a second, and a change heard late by up to this much. Counted from the
/// last such refresh, not from any: refreshes at the interval would
/// otherwise shift every announced one by up to the gap, for good, when
/// announcements come about a gap apart.
pub(super) const ANNOUNCED_GAP: std::time::Duration = std::time::Duration::from_millis(40);

impl WatchHub {
    pub(super) async fn run(self: Arc<Self>, queue: QueueId, watch: Arc<QueueWatch>) {
        let mut failures = 0u32;
        let mut presence = Presence::new();
        // Reads begin at a steady pace, however long each takes, so the
        // copy is never much older than the interval.
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard_at = tokio::time::Instant::now();
        loop {
            let ticked = tokio::select! {
                _ = ticks.tick() => true,
                _ = watch.wake.notified() => false,
                // A refresh begun meanwhile for another reason reads the
                // announced change too.
                _ = async {
                    watch.heard.notified().await;
                    tokio::time::sleep_until(heard_at + ANNOUNCED_GAP).await;
                    heard_at = tokio::time::Instant::now();
                } => false,
                _ = self.shutdown.cancelled() => {
                    // Out of the map first, under the lock `watch` checks
                    // the shutdown under: no stream joins after this.
                    if let Ok(mut queues) = self.queues.lock() {
                        queues.remove(&queue);
                    }
                    let watchers = take(&watch);
                    // Told to reconnect: the timeout runs from now.
                    let mut users: Vec<UserId> = watchers.iter().map(|w| w.tx.user().clone()).collect();
                    users.extend(watch.pollers().take_unrecorded());
                    let _ = self.store.touch(&queue, &users, self.clock.now_ms()).await;
                    let reason = Error::Reconnect("this server is shutting down".into());
                    end_all(watchers, &reason);
                    return;
                }
            };
            let mut watchers = take(&watch);
            let now = self.clock.now_ms();
            // Streams that ended are looked for at the interval (or when
            // connections were told to close), not at every refresh an
            // admission asks for: each look visits every stream's shared
            // state, which at 200,000 streams and twenty refreshes a second
            // was much of a core.
            if watch.connections_closing.swap(false, Ordering::AcqRel) || ticked {
                self.let_go(&queue, &mut watchers, now);
            }
            if watchers.is_empty() && watch.pollers().is_empty() {
                if self.retire(&queue, &watch) {
                    return;
                }
                continue;
            }
            presence
                .record(&self.store, self.clock.as_ref(), &queue, &watchers, &watch)
                .await;
            let survivors = match self.refresh(&queue, &watch, &mut watchers, now).await {
                Ok(()) => {
                    failures = 0;
                    watch.refreshed.fetch_add(1, Ordering::AcqRel);
                    watch.read.notify_waiters();
                    let mut pollers = watch.pollers();
                    let copy = watch.copy();
                    if let (Some(line), Some(summary)) = (&copy.line, &copy.summary) {
                        let heartbeat_ms = watch.heartbeat_ms.load(Ordering::Relaxed);
                        pollers.prune(line, heartbeat_ms, now);
                        let bounds = vouched_bounds(line.bounds(), summary);
                        watch.bounds.set(bounds);
                        self.know_line(&queue, summary.epoch_ms, bounds);
                    }
                    watchers
                }
                Err(error @ Error::QueueNotFound(_)) => {
                    watch.copy_mut().reset();
                    *watch.pollers() = Pollers::default();
                    end_all(watchers, &error);
                    Vec::new()
                }
                Err(error) => {
                    watch.copy_mut().reset();
                    failures += 1;
                    if failures >= MAX_FAILED_REFRESHES {
                        end_all(watchers, &error);
                        Vec::new()
                    } else {
                        watchers
                    }
                }
            };
            // Streams opened meanwhile join the survivors' vector, not the
            // other way round, so the vector of every watcher is kept rather
            // than copied into a new one at each refresh.
            if let Ok(mut current) = watch.watchers.lock() {
                let mut survivors = survivors;
                survivors.append(&mut current);
                *current = survivors;
            }
        }
    }

    /// Drops the streams whose client went away and ends, told to
    /// reconnect, those whose connection is closing. Either end is a sign
    /// of life, so a reconnect has the whole heartbeat timeout from it; it
    /// is written beside the loop, which does not wait for it: a balancer's
    /// step or a proxy's restart can end tens of thousands of streams at
    /// once, and the admissions of those still open must not wait for
    /// their writes.
    fn let_go(&self, queue: &QueueId, watchers: &mut Vec<Watcher>, now: u64) {
        let mut ended: Vec<UserId> = watchers
            .iter()
            .filter(|w| w.tx.is_closed())
            .map(|w| w.tx.user().clone())
            .collect();
        if !ended.is_empty() {
            watchers.retain(|w| !w.tx.is_closed());
        }
        if watchers.iter().any(|w| w.slot.leaving()) {
            let (leaving, staying): (Vec<Watcher>, Vec<Watcher>) = std::mem::take(watchers)
                .into_iter()
                .partition(|w| w.slot.leaving());
            *watchers = staying;
            ended.extend(leaving.iter().map(|w| w.tx.user().clone()));
            let reason = self.leaving(leaving.first().and_then(|w| w.slot.connection.as_deref()));
            if let Some(reason) = reason {
                end_all(leaving, &reason);
            }
        }
        if !ended.is_empty() {
            presence::write_beside(&self.store, queue, ended, now);
        }
    }

    /// Brings the copy of the line up to date, then sends each watcher its
    /// place if it changed. Keeps in `watchers` those still watching.
    async fn refresh(
        &self,
        queue: &QueueId,
        watch: &QueueWatch,
        watchers: &mut Vec<Watcher>,
        now: u64,
    ) -> Result<()> {
        // A snapshot says nothing of the pre-queue: what happened to a
        // pre-queued watcher before it (placed by the draw, or gone) is
        // only in log entries this copy never read, so they are looked up.
        if self.catch_up(queue, watch, watchers).await? {
            for watcher in watchers.iter_mut().filter(|w| w.ticket.is_none()) {
                watcher.ticket = Some(0);
            }
        }
        self.send_places(queue, watch, watchers, now).await
    }

    /// Brings the copy of the line up to date with the store, from a new
    /// snapshot when it has none or fell behind what the log keeps; gives
    /// pre-queued watchers the tickets the draw logged for them. True when
    /// it started from a snapshot.
    async fn catch_up(
        &self,
        queue: &QueueId,
        watch: &QueueWatch,
        watchers: &mut [Watcher],
    ) -> Result<bool> {
        // Changes made here before this point are in what is read below.
        let changes_before = watch.changes.load(Ordering::Acquire);
        // Pre-queued watchers (no ticket yet) by user, built at the first
        // log entry that names one: the draw logs every pre-queued user.
        let mut unplaced: Option<HashMap<UserId, Vec<usize>>> = None;
        // Catch up with the log; a copy that fell behind what the log keeps
        // starts again from a snapshot. Reads happen outside the lock, so
        // lookups go on meanwhile.
        let mut from_snapshot = false;
        for _ in 0..MAX_CATCH_UP_READS {
            let seqs = watch.copy().line.as_ref().map(|line| line.seqs.clone());
            let seqs = match seqs {
                Some(seqs) => seqs,
                None => {
                    from_snapshot = true;
                    let (epoch_ms, snapshots) = self.snapshot(queue).await?;
                    let previous = watch.epoch_ms.swap(epoch_ms, Ordering::AcqRel);
                    if previous != 0 && previous != epoch_ms {
                        // The queue was created again: every ticket known
                        // is of the old one.
                        *watch.pollers() = Pollers::default();
                        for watcher in watchers.iter_mut().filter(|w| w.ticket.is_some()) {
                            watcher.ticket = Some(0);
                        }
                    }
                    let line = Line::from_snapshots(snapshots);
                    let seqs = line.seqs.clone();
                    watch.copy_mut().line = Some(line);
                    seqs
                }
            };
            // The moment the copy is as of, for lookups: the summary's
            // rate is computed for it, and the log is read after it.
            let read_ms = self.clock.now_ms();
            let read_at = std::time::Instant::now();
            let read_no = watch.reads.fetch_add(1, Ordering::AcqRel) + 1;
            // One read of each sub-line's log (one log for a queue of one).
            let mut reads = Vec::with_capacity(seqs.len());
            for (sub_line, seq) in seqs.iter().enumerate() {
                reads.push(
                    self.store
                        .line_changes(queue, sub_line as u32, *seq, CHANGES_PER_READ, read_ms)
                        .await?,
                );
            }
            let mut copy = watch.copy_mut();
            if reads.iter().any(|changes| !changes.complete) {
                copy.reset();
                continue;
            }
            let Some(current) = copy.line.as_mut() else {
                continue;
            };
            let epoch_ms = watch.epoch_ms.load(Ordering::Acquire);
            let sub_lines = current.seqs.len();
            if reads.iter().any(|changes| {
                changes.summary.epoch_ms != epoch_ms
                    || changes.summary.shards.max(1) as usize != sub_lines
            }) {
                // The queue was created again: a new snapshot (which drops
                // what was known of the old one, and reads as many
                // sub-lines as it now has).
                copy.reset();
                continue;
            }
            let mut caught_up = true;
            let mut last_summary = None;
            for (sub_line, changes) in reads.into_iter().enumerate() {
                for (seq, event) in changes.events {
                    if let Some(at) = current.seqs.get_mut(sub_line) {
                        *at = seq;
                    }
                    let (user, ticket) = match event {
                        LineEvent::Joined { ticket, user } => {
                            current.join(ticket);
                            // A pre-queued watcher placed by the opening draw.
                            (user, ticket)
                        }
                        LineEvent::JoinedRun {
                            first_ticket,
                            count,
                        } => {
                            for ticket in first_ticket..first_ticket.saturating_add(count) {
                                current.join(ticket);
                            }
                            continue;
                        }
                        LineEvent::Left { ticket, .. } => {
                            current.leave(ticket);
                            continue;
                        }
                        // Looked up below: gone, or elsewhere.
                        LineEvent::PreQueueLeft { user } => (user, 0),
                    };
                    let unplaced = unplaced.get_or_insert_with(|| unplaced_watchers(watchers));
                    if !unplaced.is_empty()
                        && let Some(found) = unplaced.remove(&user)
                    {
                        for i in found {
                            watchers[i].ticket = Some(ticket);
                        }
                    }
                }
                current.note_held(sub_line, changes.summary.seq, changes.summary.held);
                caught_up &= current
                    .seqs
                    .get(sub_line)
                    .is_some_and(|seq| *seq >= changes.summary.seq);
                last_summary = Some(changes.summary);
            }
            let Some(mut summary) = last_summary else {
                continue;
            };
            watch
                .heartbeat_ms
                .store(summary.heartbeat_ms, Ordering::Relaxed);
            // Unchanged signs keep sharing one text, so each watcher's
            // comparison does not read it.
            if let Some(previous) = &copy.summary {
                summary.signs = summary.signs.sharing(&previous.signs);
            }
            copy.summary = Some(summary);
            copy.read_ms = read_ms;
            copy.read_at = Some(read_at);
            copy.read_no = read_no;
            copy.changes_seen = caught_up.then_some(changes_before);
            if caught_up {
                break;
            }
        }
        Ok(from_snapshot)
    }

    /// Sends each watcher its place from the copy if what it sees changed;
    /// watchers whose ticket left the line are looked up in the store, all
    /// in one call.
    async fn send_places(
        &self,
        queue: &QueueId,
        watch: &QueueWatch,
        watchers: &mut Vec<Watcher>,
        now: u64,
    ) -> Result<()> {
        // Watchers whose ticket left the line: one lookup for all of them.
        let mut gone: Vec<UserId> = {
            let copy = watch.copy();
            let (Some(line), Some(_)) = (&copy.line, &copy.summary) else {
                return Err(Error::Unavailable(
                    "the line log could not be followed".into(),
                ));
            };
            watchers
                .iter()
                .filter(|w| w.ticket.is_some_and(|t| !line.contains(t)))
                .map(|w| w.tx.user().clone())
                .collect()
        };
        gone.sort();
        gone.dedup();
        let looked_up: HashMap<UserId, Option<Place>> = if gone.is_empty() {
            HashMap::new()
        } else {
            let places = self.store.places(queue, &gone, false, now).await?;
            gone.into_iter().zip(places).collect()
        };

        let copy = watch.copy();
        let (Some(line), Some(summary)) = (&copy.line, &copy.summary) else {
            return Err(Error::Unavailable(
                "the line log could not be followed".into(),
            ));
        };
        let in_line = summary.waiting + summary.prequeued;
        let opens_in_ms = match (summary.opened, summary.opens_at_ms) {
            (false, Some(at)) => at.saturating_sub(now),
            _ => 0,
        };
        let pace = self.position_pace_ms();
        let place_of = |watcher: &mut Watcher| match watcher.ticket {
            None => Some(Place {
                state: PlaceState::PreQueue { opens_in_ms },
                ticket: 0,
                epoch_ms: summary.epoch_ms,
                waiting_count: in_line,
                mode: summary.mode,
                rate: summary.rate,
                signs: summary.signs.clone(),
            }),
            Some(ticket) if line.contains(ticket) => line.place(summary, ticket),
            Some(_) => {
                let found = looked_up.get(watcher.tx.user()).cloned().flatten();
                // Enqueued again under a new ticket: follow that one.
                watcher.ticket = found.as_ref().map(|p| p.ticket).filter(|t| *t > 0);
                found
            }
        };
        // Changes of state first; changes of position only, paced, after.
        let mut paced = 0usize;
        watchers.retain_mut(|watcher| {
            // Still in line, the mode unchanged, not due: nothing this
            // refresh could send, so its place is not even computed.
            if pace > 0
                && now < watcher.paced_until_ms
                && watcher.last.is_waiting()
                && watcher.last.mode() == summary.mode
                && watcher.last.shows_signs(&summary.signs)
                && watcher.ticket.is_some_and(|t| line.contains(t))
            {
                return true;
            }
            let place = place_of(watcher);
            match offer(watcher, place, queue, now, pace) {
                Offer::Keep => true,
                Offer::Drop => false,
                Offer::Paced => {
                    paced += 1;
                    true
                }
            }
        });
        if paced > 0 {
            // A send refused (the stream gone, or stalled unread) lets the
            // stream go, here as everywhere.
            watchers.retain_mut(|watcher| {
                if !watcher.due {
                    return true;
                }
                watcher.due = false;
                let Some(place) = place_of(watcher) else {
                    return true;
                };
                let view = View::of(&place, now);
                if watcher.tx.send(Ok(place)).is_err() {
                    return false;
                }
                watcher.last = view;
                watcher.paced_until_ms = next_moment(now, watcher.phase, pace);
                true
            });
        }
        Ok(())
    }

    /// The whole line, each sub-line's read in chunks (see
    /// [`crate::domain::LineSnapshot`]), and the queue's creation time.
    async fn snapshot(&self, queue: &QueueId) -> Result<(u64, Vec<LineSnapshot>)> {
        let first = self.sub_line_snapshot(queue, 0).await?;
        let epoch_ms = first.epoch_ms;
        let shards = first.shards.max(1);
        let mut snapshots = vec![first];
        for sub_line in 1..shards {
            let next = self.sub_line_snapshot(queue, sub_line).await?;
            if next.epoch_ms != epoch_ms {
                return Err(Error::Unavailable(
                    "the queue was created again while its line was read".into(),
                ));
            }
            snapshots.push(next);
        }
        Ok((epoch_ms, snapshots))
    }

    /// One sub-line's waiting tickets, read in chunks, as of the first.
    async fn sub_line_snapshot(&self, queue: &QueueId, sub_line: u32) -> Result<LineSnapshot> {
        let mut snapshot = self
            .store
            .line_snapshot(queue, sub_line, 0, SNAPSHOT_CHUNK)
            .await?;
        let mut last_chunk = snapshot.tickets.len();
        while last_chunk == SNAPSHOT_CHUNK as usize {
            let after = snapshot.tickets.last().copied().unwrap_or(0);
            let chunk = self
                .store
                .line_snapshot(queue, sub_line, after, SNAPSHOT_CHUNK)
                .await?;
            if chunk.epoch_ms != snapshot.epoch_ms {
                return Err(Error::Unavailable(
                    "the queue was created again while its line was read".into(),
                ));
            }
            last_chunk = chunk.tickets.len();
            snapshot.tickets.extend(chunk.tickets);
        }
        Ok(snapshot)
    }

    /// Removes a queue with no watchers or pollers left; false if one
    /// arrived meanwhile.
    fn retire(&self, queue: &QueueId, watch: &QueueWatch) -> bool {
        let Ok(mut queues) = self.queues.lock() else {
            return true;
        };
        let empty =
            watch.watchers.lock().map_or(true, |w| w.is_empty()) && watch.pollers().is_empty();
        if empty {
            queues.remove(queue);
        }
        empty
    }
}

fn take(watch: &QueueWatch) -> Vec<Watcher> {
    watch
        .watchers
        .lock()
        .map(|mut w| std::mem::take(&mut *w))
        .unwrap_or_default()
}

/// The indices of the watchers without a ticket (pre-queued), by user.
fn unplaced_watchers(watchers: &[Watcher]) -> HashMap<UserId, Vec<usize>> {
    let mut unplaced: HashMap<UserId, Vec<usize>> = HashMap::new();
    for (i, watcher) in watchers.iter().enumerate() {
        if watcher.ticket.is_none() {
            unplaced
                .entry(watcher.tx.user().clone())
                .or_default()
                .push(i);
        }
    }
    unplaced
}

/// What became of a watcher offered its place.
enum Offer {
    /// Sent, nothing to send, or the client gone (left for the interval's
    /// look for ended streams, which counts the end as a sign of life).
    Keep,
    /// Done: after a final place, a vanished place, or a send that failed.
    Drop,
    /// Only its position, count or estimate changed, and it is due: to be
    /// sent after the changes of state of this refresh.
    Paced,
}

/// Sends a watcher its place if what the user sees changed: at once for a
/// change of state, or marks it due when only its position, count or
/// estimate changed and its pace allows (`pace_ms` 0: at once too).
fn offer(
    watcher: &mut Watcher,
    place: Option<Place>,
    queue: &QueueId,
    now_ms: u64,
    pace_ms: u64,
) -> Offer {
    let Some(place) = place else {
        let _ = watcher
            .tx
            .send(Err(Error::PlaceNotFound(queue.to_string())));
        return Offer::Drop;
    };
    // Kept until the interval's look for ended streams, which counts the
    // end as a sign of life.
    if watcher.tx.is_closed() {
        return Offer::Keep;
    }
    let view = View::of(&place, now_ms);
    if !view.differs_from(&watcher.last) {
        watcher.last.shows_signs(&place.signs);
        // Nothing to send at this moment: the next is the stream's own, so
        // a change seen later waits for it rather than going out with
        // everyone else's.
        if pace_ms > 0 && now_ms >= watcher.paced_until_ms {
            watcher.paced_until_ms = next_moment(now_ms, watcher.phase, pace_ms);
        }
        return Offer::Keep;
    }
    if pace_ms > 0 && !view.state_differs_from(&watcher.last) {
        if now_ms < watcher.paced_until_ms {
            return Offer::Keep;
        }
        watcher.due = true;
        return Offer::Paced;
    }
    // A final place ends the stream: the watcher is dropped with its
    // sender, after the place is read.
    let is_final = place.is_final();
    if watcher.tx.send(Ok(place)).is_ok() && !is_final {
        watcher.last = view;
        return Offer::Keep;
    }
    Offer::Drop
}

fn end_all(watchers: Vec<Watcher>, error: &Error) {
    let error = match error {
        Error::QueueNotFound(_) | Error::PlaceNotFound(_) | Error::Reconnect(_) => error.clone(),
        other => Error::Unavailable(other.to_string()),
    };
    for watcher in watchers {
        let _ = watcher.tx.send(Err(error.clone()));
    }
}

/// The bounds of the line a refresh can vouch for, in receipts and in what
/// this instance remembers of the line: while anyone is pre-queued or being
/// placed by the opening draw, tickets below every waiting one may still
/// join (the draw's block), and so they may in a queue of several
/// sub-lines (a block leased before the lowest waiting ticket's, open for
/// τ more): then no head is vouched for.
fn vouched_bounds((head, top): (u64, u64), summary: &LineSummary) -> (u64, u64) {
    if summary.prequeued > 0 || summary.shards > 1 {
        (0, top)
    } else {
        (head, top)
    }
}

#[cfg(test)]
mod tests {
    use super::vouched_bounds;
    use crate::domain::{LineSummary, QueueMode, RateSample};

    fn summary(prequeued: u64, shards: u32) -> LineSummary {
        LineSummary {
            epoch_ms: 1,
            seq: 1,
            mode: QueueMode::Queueing,
            waiting: 10,
            prequeued,
            opens_at_ms: None,
            opened: true,
            rate: RateSample::default(),
            heartbeat_ms: 120_000,
            signs: Default::default(),
            shards,
            held: crate::domain::DrawHold::NONE,
        }
    }

    /// Newcomers during the opening draw wait above the block the draw is
    /// filling, and in a queue of several sub-lines a join may take a
    /// ticket below the lowest waiting one from an older block: their
    /// tickets say nothing of who is gone below them.
    #[test]
    fn no_head_is_vouched_for_while_a_ticket_may_still_join_below() {
        assert_eq!(vouched_bounds((1001, 1010), &summary(1000, 1)), (0, 1010));
        assert_eq!(vouched_bounds((1001, 1010), &summary(0, 2)), (0, 1010));
        assert_eq!(vouched_bounds((1, 1010), &summary(0, 1)), (1, 1010));
    }
}
