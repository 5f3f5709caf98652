//! A scheduled opening of a queue over sub-lines (`docs/design.md`, "One
//! sale over several Redis slots", "The opening"): the memory store's opening of one
//! queue (`store/memory/opening.rs`), split between the sub-lines, which
//! hold the pre-queue and the draw's pool, and the head, which holds the
//! sequence (`draw_sub_line.lua`, `draw_head.lua`).
//!
//! - The opening ([`SubLineLink::open`]): the head marks it begun (due by
//!   its own `opens_at`, which can no longer move), every sub-line's
//!   pre-queue is frozen, the head reserves as many tickets as they hold
//!   after every ticket leased, every sub-line is told the reservation,
//!   and only then may the draw start. A sub-line's call that finds the
//!   opening due or under way, and a head call that leases, admits or
//!   draws meanwhile, make it first. Nobody who joins after the opening
//!   therefore stands ahead of someone drawn, and nobody pre-queued is
//!   missed by the reservation.
//! - The draw: each sub-line gives its own pre-queued users their keys
//!   under the seed the head fixed; then each step merges the lowest keys
//!   of every sub-line's pool, and the head journals their tickets before
//!   any sub-line places anyone, so a step cut short is carried out as
//!   journalled by the next, and nobody gets two tickets.

use std::collections::HashMap;

use futures_util::future::try_join_all;

use super::reply::{Reply, bad_reply};
use super::sub_lines::{Layout, SubLineLink};
use crate::Result;

/// The draw's round as a step read it, before it read the pools.
struct Round {
    read: String,
    /// A plan was journalled and not carried out.
    pending: bool,
    /// The seed the draw runs under.
    seed: String,
    /// How many times the draw was taken up again.
    taken: String,
    /// The reservation's last ticket.
    end: u64,
}

impl Round {
    /// The round of an 'assigning' answer of `draw_head.lua`'s 'seed',
    /// after its state: seed, round, whether a plan is journalled, times
    /// taken up, the reservation's last ticket.
    fn read(reply: &mut Reply) -> Result<Self> {
        let (seed, read, pending) = (reply.string()?, reply.string()?, reply.string()?);
        Ok(Self {
            read,
            pending: pending == "1",
            seed,
            taken: reply.string()?,
            end: reply.u64()?,
        })
    }
}

impl SubLineLink<'_> {
    /// Makes the queue's opening, as every call does first once it is due
    /// (`prelude.lua`, `prepare`); a repeat finds it made, and one cut
    /// short is carried on by the next.
    pub(super) async fn open(&self, now_ms: u64) -> Result<()> {
        let layout = self.layout().await?;
        if !self.begin_opening(&layout, now_ms).await? {
            return Ok(());
        }
        let (held, untold) = self.close_sub_lines(&layout, now_ms).await?;
        self.reserve_and_tell(&layout, held, untold, now_ms).await
    }

    /// The head marks the opening begun if it is due by its own time, and
    /// says whether it was; if not, every sub-line takes the head's.
    async fn begin_opening(&self, layout: &Layout, now_ms: u64) -> Result<bool> {
        let mut begun = self.draw_head(&["close"], now_ms).await?;
        if begun.string()? == "not_due" {
            // A sub-line's copy of an opening since moved, or a closing
            // begun for a queue deleted and made again: every sub-line
            // takes the head's opening, and one closing goes back to its
            // pre-queue.
            let mut head = HashMap::new();
            while begun.remaining() > 0 {
                head.insert(begun.string()?, begun.string()?);
            }
            let field = |name: &str| head.get(name).map_or("0", String::as_str);
            let (opens_at, window) = (field("opens_at_ms"), field("prequeue_window_ms"));
            let version = field("settings_version");
            for sub_line in 0..layout.shards as usize {
                self.draw_on(
                    layout,
                    sub_line,
                    &["reopen", opens_at, window, version],
                    now_ms,
                )
                .await?;
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// Closes every sub-line's pre-queue: how many they hold, and of them
    /// how many on sub-lines not told the reservation yet.
    async fn close_sub_lines(&self, layout: &Layout, now_ms: u64) -> Result<(u64, u64)> {
        // Those not told the reservation yet include a sub-line made again
        // since a draw over: its users are drawn still.
        let (mut held, mut untold) = (0, 0);
        for sub_line in 0..layout.shards as usize {
            let mut closed = self.draw_on(layout, sub_line, &["close"], now_ms).await?;
            let holds = closed.u64()?;
            held += holds;
            if closed.u64()? == 1 {
                untold += holds;
            }
        }
        Ok((held, untold))
    }

    /// The head reserves what the sub-lines hold (once), every sub-line is
    /// told, and the head marks the opening made.
    async fn reserve_and_tell(
        &self,
        layout: &Layout,
        held: u64,
        untold: u64,
        now_ms: u64,
    ) -> Result<()> {
        let (held, untold) = (held.to_string(), untold.to_string());
        let mut reply = self
            .draw_head(&["open", held.as_str(), untold.as_str()], now_ms)
            .await?;
        let (told, last) = (reply.string()?, reply.string()?);
        if told == "none" {
            return Ok(());
        }
        let (resumed, taken, planned) = (reply.u64()? == 1, reply.string()?, reply.string()?);
        let epoch = reply.string()?;
        let told = [
            "open",
            told.as_str(),
            last.as_str(),
            planned.as_str(),
            epoch.as_str(),
        ];
        for sub_line in 0..layout.shards as usize {
            self.draw_on(layout, sub_line, &told, now_ms).await?;
        }
        self.draw_head(&["opened"], now_ms).await?;
        // A finished draw taken up again by a count read while the
        // sub-lines closed (nobody left to draw after all) ends again.
        if resumed {
            self.draw_done(layout, &taken, now_ms).await?;
        }
        Ok(())
    }

    /// One step of the opening draw over sub-lines: at most `chunk` users
    /// given their keys, or placed. Whether the draw is over (or there is
    /// none).
    pub(super) async fn draw_step(
        &self,
        layout: &Layout,
        seed: &str,
        chunk: u32,
        now_ms: u64,
    ) -> Result<bool> {
        let mut reply = self.draw_head(&["seed", seed], now_ms).await?;
        let draw = reply.string()?;
        match draw.as_str() {
            "none" => Ok(true),
            "done" => {
                // The sub-lines' part, should a step have stopped between;
                // one still holding someone to draw takes the draw up again.
                if self.sub_lines_done(layout, now_ms).await? {
                    return Ok(true);
                }
                self.draw_head(&["resume"], now_ms).await?;
                Ok(false)
            }
            "hashing" => {
                let seed = reply.string()?;
                let mut budget = u64::from(chunk);
                let mut left = 0;
                for sub_line in 0..layout.shards as usize {
                    let most = budget.to_string();
                    let mut hashed = self
                        .draw_on(
                            layout,
                            sub_line,
                            &["hash", seed.as_str(), most.as_str()],
                            now_ms,
                        )
                        .await?;
                    budget = budget.saturating_sub(hashed.u64()?);
                    left += hashed.u64()?;
                }
                if left == 0 {
                    self.draw_head(&["assigning"], now_ms).await?;
                }
                Ok(false)
            }
            "assigning" => {
                let round = Round::read(&mut reply)?;
                self.draw_places(layout, chunk, &round, now_ms, usize::MAX)
                    .await
            }
            other => Err(bad_reply(other)),
        }
    }

    /// Places the next `chunk` users by draw key over all sub-lines; a
    /// step cut short (a replica stopped) places them on the first
    /// `placing` sub-lines only.
    async fn draw_places(
        &self,
        layout: &Layout,
        chunk: u32,
        round: &Round,
        now_ms: u64,
        placing: usize,
    ) -> Result<bool> {
        let most = chunk.to_string();
        // (key, user, sub-line): the order of `(key, user)`, as a sorted
        // set orders members of one score, and as the memory store's pool.
        // A plan left undone is carried out first, without reading them.
        let mut lowest: Vec<(u64, String, usize)> = Vec::new();
        let mut top = 0;
        for sub_line in (0..layout.shards as usize).filter(|_| !round.pending) {
            let mut pool = self
                .draw_on(
                    layout,
                    sub_line,
                    &["pool", most.as_str(), round.seed.as_str()],
                    now_ms,
                )
                .await?;
            top = top.max(pool.u64()?);
            while pool.remaining() > 0 {
                let user = pool.string()?;
                lowest.push((pool.u64()?, user, sub_line));
            }
        }
        if lowest.is_empty() && !round.pending {
            // Nobody joins a pool once the keys are given: it is over.
            return self.draw_done(layout, &round.taken, now_ms).await;
        }
        lowest.sort_unstable_by(|a, b| (a.0, a.1.as_bytes()).cmp(&(b.0, b.1.as_bytes())));
        lowest.truncate(chunk as usize);
        let sub_lines: Vec<String> = lowest.iter().map(|(_, _, s)| s.to_string()).collect();
        let top = top.to_string();
        let mut args = vec!["plan", round.read.as_str(), top.as_str()];
        for ((_, user, _), sub_line) in lowest.iter().zip(&sub_lines) {
            args.push(sub_line.as_str());
            args.push(user.as_str());
        }
        // The plan journalled: this one, or one another step left undone.
        let mut plan = self.draw_head(&args, now_ms).await?;
        if plan.string()? == "again" {
            return Ok(false);
        }
        let first = plan.string()?;
        // Each sub-line's part follows the step's last ticket (over every
        // sub-line), which each records as placed (`DrawHold`).
        let mut placed: Vec<Vec<String>> =
            vec![vec!["place".to_owned(), String::new()]; layout.shards as usize];
        let mut through = 0;
        while plan.remaining() > 0 {
            let sub_line = plan.u64()? as usize;
            let (user, ticket) = (plan.string()?, plan.u64()?);
            through = through.max(ticket);
            let args = placed
                .get_mut(sub_line)
                .ok_or_else(|| bad_reply("a plan's sub-line"))?;
            args.push(user);
            args.push(ticket.to_string());
        }
        for args in &mut placed {
            args[1] = through.to_string();
        }
        // Numbered past the reservation (a draw taken up again): every
        // sub-line holds up to there before any places it.
        if through > round.end {
            let through = through.to_string();
            let reach = ["reach", through.as_str()];
            try_join_all(
                (0..layout.shards as usize).map(|s| self.draw_on(layout, s, &reach, now_ms)),
            )
            .await?;
        }
        // Every sub-line's part at once: a reader between them would count
        // a drawn ticket's place without the tickets below it placed on
        // the sub-lines not yet told.
        let args: Vec<Vec<&str>> = placed
            .iter()
            .map(|args| args.iter().map(String::as_str).collect())
            .collect();
        let mut left = 0;
        let steps = args
            .iter()
            .enumerate()
            .take(placing)
            .map(|(sub_line, args)| self.draw_on(layout, sub_line, args, now_ms));
        for mut step in try_join_all(steps).await? {
            left += step.u64()?;
        }
        if placing < placed.len() {
            return Ok(false);
        }
        self.draw_head(&["placed", first.as_str()], now_ms).await?;
        if left == 0 {
            return self.draw_done(layout, &round.taken, now_ms).await;
        }
        Ok(false)
    }

    /// Ends the draw: on every sub-line, then at the head, so a step cut
    /// short in between ends it again; not while a sub-line still holds
    /// someone to draw, nor if the draw was taken up again since `taken`
    /// was read. Whether it ended.
    async fn draw_done(&self, layout: &Layout, taken: &str, now_ms: u64) -> Result<bool> {
        if !self.sub_lines_done(layout, now_ms).await? {
            return Ok(false);
        }
        Ok(self.draw_head(&["done", taken], now_ms).await?.u64()? == 1)
    }

    /// Ends the draw on every sub-line that holds nobody left to draw;
    /// whether it ended on all of them.
    async fn sub_lines_done(&self, layout: &Layout, now_ms: u64) -> Result<bool> {
        let mut all = true;
        for sub_line in 0..layout.shards as usize {
            all &= self
                .draw_on(layout, sub_line, &["done"], now_ms)
                .await?
                .u64()?
                == 1;
        }
        Ok(all)
    }

    async fn draw_on(
        &self,
        layout: &Layout,
        sub_line: usize,
        args: &[&str],
        now_ms: u64,
    ) -> Result<Reply> {
        self.on_sub_line(
            "draw",
            &self.scripts.draw_sub_line,
            layout,
            sub_line,
            args,
            now_ms,
        )
        .await
    }

    async fn draw_head(&self, args: &[&str], now_ms: u64) -> Result<Reply> {
        self.on_head_script("draw", &self.scripts.draw_head, args, now_ms)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Round;
    use crate::domain::draw::draw_order;
    use crate::domain::{PlaceState, QueueConfig, QueueId, UserId};
    use crate::store::QueueStore;
    use crate::store::redis::sub_lines::Layout;
    use crate::store::redis::tests::{connection_to, store_on};
    use crate::testkit::RedisServer;

    /// A block leased before the opening and installed after it (its
    /// lease was in flight while the pre-queue closed) gives no ticket:
    /// a newcomer after the opening stands behind everyone drawn.
    #[tokio::test]
    async fn a_block_leased_before_the_opening_is_not_installed_after_it() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 2, 20).await;
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        let (first, era) = link.lease_in(8, 9_999).await.unwrap();
        link.open(10_000).await.unwrap();
        let block = crate::store::redis::sub_lines::block_args(first, 8, 10_000, &era);
        let keys = layout.keys("t", 0).unwrap();
        let installed = link.install_block(&keys, &block, 10_000).await.unwrap();
        assert!(!installed);
        let newcomer = one_of(&layout, "late", 0);
        let late = store.enqueue(&queue, &newcomer, 10_001).await.unwrap();
        while !store.draw_step(&queue, "seed", 100, 10_002).await.unwrap() {}
        for n in 0..20 {
            let user = UserId::parse(&format!("early-{n}")).unwrap();
            let drawn = store.place(&queue, &user, 10_003).await.unwrap().unwrap();
            assert!(drawn.ticket < late.ticket, "{drawn:?} {late:?}");
        }
    }

    /// A step that read the pools in an earlier round (another step
    /// placed some of them since) plans nobody: those it read would be
    /// given tickets again, past the reservation.
    #[tokio::test]
    async fn a_plan_of_pools_read_before_another_step_placed_them_is_refused() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 3, 30).await;
        assert!(!store.draw_step(&queue, "seed", 100, 10_000).await.unwrap());
        let link = store.link(&queue);
        let mut seed = link.draw_head(&["seed", "seed"], 10_000).await.unwrap();
        let round: Vec<String> = (0..5).map(|_| seed.string().unwrap()).collect();
        assert_eq!(round[0], "assigning");
        // Another replica's step places the lowest ten.
        assert!(!store.draw_step(&queue, "seed", 10, 10_001).await.unwrap());
        let placed = draw_order("seed", &early(30))[0].to_string();
        let mut stale = link
            .draw_head(
                &["plan", round[2].as_str(), "0", "0", placed.as_str()],
                10_002,
            )
            .await
            .unwrap();
        assert_eq!(stale.string().unwrap(), "again");
        while !store.draw_step(&queue, "seed", 7, 10_003).await.unwrap() {}
        let mut tickets = Vec::new();
        for user in early(30) {
            tickets.push(
                store
                    .place(&queue, &user, 10_004)
                    .await
                    .unwrap()
                    .unwrap()
                    .ticket,
            );
        }
        tickets.sort_unstable();
        assert_eq!(tickets, (1..=30).collect::<Vec<u64>>());
    }

    /// An opening cut short after the head reserved and before every
    /// sub-line was told: the draw does not start until the next maker
    /// has told them all, so nobody pre-queued is left out of it.
    #[tokio::test]
    async fn an_opening_cut_short_before_every_sub_line_was_told_is_made_whole_first() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 3, 30).await;
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        link.draw_head(&["close"], 10_000).await.unwrap();
        let mut held = 0;
        for sub_line in 0..3 {
            held += link
                .draw_on(&layout, sub_line, &["close"], 10_000)
                .await
                .unwrap()
                .u64()
                .unwrap();
        }
        let held = held.to_string();
        let mut reply = link
            .draw_head(&["open", held.as_str(), held.as_str()], 10_000)
            .await
            .unwrap();
        let (told, last) = (reply.string().unwrap(), reply.string().unwrap());
        link.draw_on(&layout, 0, &["open", told.as_str(), last.as_str()], 10_000)
            .await
            .unwrap();
        let other = store_on(&redis).await.with_sub_lines();
        while !other.draw_step(&queue, "seed", 7, 10_001).await.unwrap() {}
        let mut placed = Vec::new();
        for user in early(30) {
            let place = store.place(&queue, &user, 10_002).await.unwrap().unwrap();
            assert!(
                matches!(place.state, PlaceState::Waiting { .. }),
                "{user}: {place:?}"
            );
            placed.push((place.ticket, user));
        }
        placed.sort();
        let tickets: Vec<u64> = placed.iter().map(|(ticket, _)| *ticket).collect();
        assert_eq!(tickets, (1..=30).collect::<Vec<u64>>());
        let order: Vec<UserId> = placed.into_iter().map(|(_, user)| user).collect();
        assert_eq!(order, draw_order("seed", &early(30)));
    }

    /// A sub-line whose copy of the opening is older than a move (its copy
    /// failed) does not open the queue at the old time: it takes the
    /// head's, and the join is pre-queued.
    #[tokio::test]
    async fn a_sub_line_s_copy_of_a_moved_opening_does_not_open_the_queue_early() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 2, 10).await;
        let moved = crate::domain::QueueUpdate {
            opens_at: Some(Some(20_000)),
            ..Default::default()
        };
        store.update_queue(&queue, &moved, 5_000).await.unwrap();
        let layout = store.link(&queue).layout().await.unwrap();
        let stale = layout.keys("t", 1).unwrap();
        set_fields(
            &redis,
            &stale[0],
            &[
                ("opens_at_ms", "10000".into()),
                ("settings_version", "0".into()),
            ],
        );
        let user = one_of(&layout, "late", 1);
        let place = store.enqueue(&queue, &user, 10_001).await.unwrap();
        assert_eq!(place.state, PlaceState::PreQueue { opens_in_ms: 9_999 });
        let config = store.get_queue(&queue).await.unwrap();
        assert_eq!(config.opens_at_ms, Some(20_000));
        assert!(!config.draw_complete);
        let stats = store.stats(&queue, 10_002).await.unwrap();
        assert_eq!(stats.prequeued, 11);
    }

    /// A head back from a replica without its last plans (its next ticket
    /// rolled back, its plan gone) gives no drawn ticket twice: a plan
    /// starts above every drawn ticket a sub-line placed.
    #[tokio::test]
    async fn a_head_that_lost_its_last_plans_gives_no_drawn_ticket_twice() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 3, 30).await;
        // Hashed, then twelve placed.
        assert!(!store.draw_step(&queue, "seed", 100, 10_000).await.unwrap());
        assert!(!store.draw_step(&queue, "seed", 12, 10_001).await.unwrap());
        let head = crate::store::redis::keys::queue_keys("t", &queue);
        set_fields(&redis, &head[0], &[("draw_next", "1".into())]);
        while !store.draw_step(&queue, "seed", 5, 10_002).await.unwrap() {}
        let mut tickets = Vec::new();
        for user in early(30) {
            let place = store.place(&queue, &user, 10_003).await.unwrap().unwrap();
            assert!(
                matches!(place.state, PlaceState::Waiting { .. }),
                "{user}: {place:?}"
            );
            tickets.push(place.ticket);
        }
        tickets.sort_unstable();
        tickets.dedup();
        assert_eq!(tickets.len(), 30, "a drawn ticket twice");
    }

    /// A head back without its last plan, whose last ticket went to
    /// someone who left before their sub-line placed them: every sub-line
    /// counts that step as placed, so no later plan gives that ticket.
    #[tokio::test]
    async fn a_head_that_lost_a_plan_whose_last_user_left_gives_none_of_its_tickets_again() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 3, 30).await;
        assert!(!store.draw_step(&queue, "seed", 100, 10_000).await.unwrap());
        assert!(!store.draw_step(&queue, "seed", 12, 10_001).await.unwrap());
        // Ticket 12's holder leaves; as if they had left before the step
        // placed them, no sub-line counts them among those it placed.
        let layout = store.link(&queue).layout().await.unwrap();
        let mut left = None;
        for user in early(30) {
            let place = store.place(&queue, &user, 10_001).await.unwrap().unwrap();
            if place.ticket == 12 {
                left = Some(user);
            }
        }
        let left = left.expect("ticket 12 placed");
        assert!(store.leave(&queue, &left, 10_001).await.unwrap());
        for sub_line in 0..3 {
            let keys = layout.keys("t", sub_line).unwrap();
            set_fields(&redis, &keys[0], &[("drawn_top", "11".into())]);
        }
        let head = crate::store::redis::keys::queue_keys("t", &queue);
        set_fields(&redis, &head[0], &[("draw_next", "1".into())]);
        while !store.draw_step(&queue, "seed", 5, 10_002).await.unwrap() {}
        let mut tickets = Vec::new();
        for user in early(30).into_iter().filter(|user| *user != left) {
            let place = store.place(&queue, &user, 10_003).await.unwrap().unwrap();
            tickets.push(place.ticket);
        }
        assert!(!tickets.contains(&12), "{tickets:?}");
        tickets.sort_unstable();
        tickets.dedup();
        assert_eq!(tickets.len(), 29, "a drawn ticket twice");
    }

    /// A sub-line left closing while its head holds no opening due (a
    /// closing begun for a queue since deleted and made again) goes back
    /// to its pre-queue at its next call, rather than refuse every call.
    #[tokio::test]
    async fn a_sub_line_left_closing_under_a_head_with_no_opening_due_takes_joins_again() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 2, 4).await;
        let layout = store.link(&queue).layout().await.unwrap();
        let closing = layout.keys("t", 0).unwrap();
        set_fields(&redis, &closing[0], &[("draw", "closing".into())]);
        let user = one_of(&layout, "next", 0);
        let place = store.enqueue(&queue, &user, 5_000).await.unwrap();
        assert_eq!(place.state, PlaceState::PreQueue { opens_in_ms: 5_000 });
        assert!(!store.get_queue(&queue).await.unwrap().draw_complete);
    }

    /// A sub-line made again empty after the draw, on which a replica
    /// whose clock is behind pre-queued someone: the next call at the
    /// opening tells it the reservation, and the draw goes on for that
    /// user, who is placed once.
    #[tokio::test]
    async fn someone_pre_queued_on_a_sub_line_made_again_after_the_draw_is_drawn_too() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 2, 20).await;
        while !store.draw_step(&queue, "seed", 100, 10_000).await.unwrap() {}
        let layout = store.link(&queue).layout().await.unwrap();
        let remade = layout.keys("t", 1).unwrap();
        set_fields(
            &redis,
            &remade[0],
            &[("draw", "none".into()), ("draw_end", "0".into())],
        );
        let skewed = one_of(&layout, "skewed", 1);
        let place = store.enqueue(&queue, &skewed, 9_990).await.unwrap();
        assert!(
            matches!(place.state, PlaceState::PreQueue { .. }),
            "{place:?}"
        );
        // A worker's step at the opening by its clock: the draw goes on,
        // and is not over until that user is placed.
        assert!(!store.draw_step(&queue, "other", 100, 10_010).await.unwrap());
        assert!(!store.get_queue(&queue).await.unwrap().draw_complete);
        while !store.draw_step(&queue, "other", 100, 10_020).await.unwrap() {}
        let late = one_of(&layout, "late", 1);
        store.enqueue(&queue, &late, 10_025).await.unwrap();
        let drawn = store.place(&queue, &skewed, 10_030).await.unwrap().unwrap();
        assert!(
            matches!(drawn.state, PlaceState::Waiting { .. }),
            "{drawn:?}"
        );
        let mut tickets = vec![drawn.ticket];
        for user in early(20).iter().chain([&late]) {
            tickets.push(
                store
                    .place(&queue, user, 10_030)
                    .await
                    .unwrap()
                    .unwrap()
                    .ticket,
            );
        }
        tickets.sort_unstable();
        tickets.dedup();
        assert_eq!(tickets.len(), 22, "a ticket twice");
        assert!(store.get_queue(&queue).await.unwrap().draw_complete);
    }

    /// A draw taken up again numbers its users past the reservation, from
    /// the sequence: a step placed on one sub-line only is still held by
    /// the others, which were told how far it reaches before any placed
    /// it.
    #[tokio::test]
    async fn a_step_numbered_past_the_reservation_is_held_until_every_sub_line_placed_it() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 2, 20).await;
        while !store.draw_step(&queue, "seed", 100, 10_000).await.unwrap() {}
        let layout = store.link(&queue).layout().await.unwrap();
        // Both sub-lines made again empty, each with someone pre-queued
        // by a replica whose clock is behind.
        let skewed: Vec<UserId> = (0..2)
            .map(|sub_line| one_of(&layout, "skewed", sub_line))
            .collect();
        for (sub_line, user) in skewed.iter().enumerate() {
            let keys = layout.keys("t", sub_line).unwrap();
            set_fields(
                &redis,
                &keys[0],
                &[("draw", "none".into()), ("draw_end", "0".into())],
            );
            let place = store.enqueue(&queue, user, 9_990).await.unwrap();
            assert!(
                matches!(place.state, PlaceState::PreQueue { .. }),
                "{place:?}"
            );
        }
        // The draw taken up again and keyed; then a step placed on
        // sub-line 0 only.
        let link = store.link(&queue);
        let round = assigning(&store, &queue, 10_010).await;
        assert_eq!(round.end, 20);
        link.draw_places(&layout, 100, &round, 10_011, 1)
            .await
            .unwrap();
        let place = store
            .place(&queue, &skewed[0], 10_012)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (place.state, place.ticket),
            (PlaceState::PreQueue { opens_in_ms: 0 }, 0),
            "placed on sub-line 0, numbered past the reservation, and not yet counted on sub-line 1"
        );
        while !store.draw_step(&queue, "other", 100, 10_013).await.unwrap() {}
        let mut tickets = Vec::new();
        for user in &skewed {
            let place = store.place(&queue, user, 10_014).await.unwrap().unwrap();
            assert!(
                matches!(place.state, PlaceState::Waiting { .. }),
                "{place:?}"
            );
            tickets.push(place.ticket);
        }
        tickets.sort_unstable();
        assert_eq!(tickets, [21, 22]);
    }

    /// A head made again mid-draw (from its sub-lines, or back from a
    /// replica without the opening) reserves anew, above its sequence:
    /// the sub-lines, told the opening again, hold up to its new last
    /// ticket, so a step of the new tickets placed on one sub-line only is
    /// not shown.
    #[tokio::test]
    async fn a_step_of_a_head_that_reserved_anew_is_held_until_every_sub_line_placed_it() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 2, 20).await;
        // Keyed, then six placed.
        assert!(!store.draw_step(&queue, "seed", 100, 10_000).await.unwrap());
        assert!(!store.draw_step(&queue, "seed", 6, 10_001).await.unwrap());
        // Someone who joins after the opening, then the head back as the
        // opening began, before its reservation.
        let late = UserId::parse("late").unwrap();
        store.enqueue(&queue, &late, 10_001).await.unwrap();
        let head = crate::store::redis::keys::queue_keys("t", &queue);
        set_fields(&redis, &head[0], &[("draw", "closing".into())]);
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        let round = assigning(&store, &queue, 10_002).await;
        assert!(
            round.end >= 35,
            "reserved anew above the late join: {}",
            round.end
        );
        let waiting = layout.keys("t", 0).unwrap()[2].clone();
        let count = |redis: &RedisServer| -> u64 {
            redis::cmd("ZCARD")
                .arg(&waiting)
                .query(&mut connection_to(redis))
                .unwrap()
        };
        let before = count(&redis);
        link.draw_places(&layout, 100, &round, 10_003, 1)
            .await
            .unwrap();
        assert!(
            count(&redis) > before,
            "the step placed someone on sub-line 0"
        );
        for user in early(20) {
            let place = store.place(&queue, &user, 10_004).await.unwrap().unwrap();
            assert!(
                !matches!(place.state, PlaceState::Waiting { .. }) || place.ticket <= 20,
                "{user} shown {place:?} before sub-line 1 placed the step"
            );
        }
        // Below the new reservation: not held.
        let place = store.place(&queue, &late, 10_004).await.unwrap().unwrap();
        assert!(
            matches!(place.state, PlaceState::Waiting { .. }),
            "{place:?}"
        );
        while !store.draw_step(&queue, "other", 100, 10_005).await.unwrap() {}
        for user in early(20) {
            let place = store.place(&queue, &user, 10_006).await.unwrap().unwrap();
            assert!(
                matches!(place.state, PlaceState::Waiting { .. }),
                "{place:?}"
            );
        }
    }

    /// A maker of the queue's opening that read a head since deleted (and
    /// the queue made again) tells the sub-lines nothing.
    #[tokio::test]
    async fn a_maker_of_another_epoch_tells_a_sub_line_nothing() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 2, 20).await;
        assert!(!store.draw_step(&queue, "seed", 100, 10_000).await.unwrap());
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        let keys = layout.keys("t", 0).unwrap();
        let draw_end = || -> u64 {
            redis::cmd("HGET")
                .arg(&keys[0])
                .arg("draw_end")
                .query(&mut connection_to(&redis))
                .unwrap()
        };
        assert_eq!(draw_end(), 20);
        let told = |epoch: &'static str| ["open", "frozen", "99", "50", epoch];
        link.draw_on(&layout, 0, &told("12345"), 10_001)
            .await
            .unwrap();
        assert_eq!(draw_end(), 20, "a maker of another epoch heeded");
        link.draw_on(&layout, 0, &told("0"), 10_001).await.unwrap();
        assert_eq!(draw_end(), 99, "a head of this epoch that reserved anew");
    }

    /// A maker that counted the sub-lines while the draw ran, and reaches
    /// the head after the draw is over, takes nothing up again: only users
    /// of a sub-line it closed itself are left to draw.
    #[tokio::test]
    async fn a_late_maker_s_count_does_not_take_a_finished_draw_up_again() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 2, 20).await;
        while !store.draw_step(&queue, "seed", 100, 10_000).await.unwrap() {}
        let link = store.link(&queue);
        let mut told = link.draw_head(&["open", "20", "0"], 10_001).await.unwrap();
        assert_eq!(told.string().unwrap(), "done");
        assert!(store.get_queue(&queue).await.unwrap().draw_complete);
        let admitted = store.admit(&queue, 5, None, 10_002).await.unwrap();
        assert_eq!(admitted.len(), 5);
    }

    /// The first user `name-0`, `name-1`, … of sub-line `sub_line`.
    fn one_of(layout: &Layout, name: &str, sub_line: usize) -> UserId {
        (0..)
            .map(|n| UserId::parse(&format!("{name}-{n}")).unwrap())
            .find(|user| layout.sub_line(user) == sub_line)
            .unwrap()
    }

    /// Sets fields of a config hash as a fault would have left them.
    fn set_fields(redis: &RedisServer, key: &str, fields: &[(&str, String)]) {
        let mut conn = connection_to(redis);
        let mut command = redis::cmd("HSET");
        command.arg(key);
        for (field, value) in fields {
            command.arg(field).arg(value);
        }
        let _: () = command.query(&mut conn).unwrap();
    }

    fn early(n: usize) -> Vec<UserId> {
        (0..n)
            .map(|n| UserId::parse(&format!("early-{n}")).unwrap())
            .collect()
    }

    /// A maker that counted the sub-lines while they were closing, and
    /// reaches the head after the draw is over, takes it up again with
    /// nobody left to draw: the draw ends again at once, and admission
    /// goes on.
    #[tokio::test]
    async fn a_draw_taken_up_by_a_late_maker_with_nobody_left_ends_again() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 2, 20).await;
        let link = store.link(&queue);
        let layout = link.layout().await.unwrap();
        assert!(link.begin_opening(&layout, 10_000).await.unwrap());
        let (held, untold) = link.close_sub_lines(&layout, 10_000).await.unwrap();
        assert_eq!((held, untold), (20, 20));
        while !store.draw_step(&queue, "seed", 100, 10_000).await.unwrap() {}
        link.reserve_and_tell(&layout, held, untold, 10_001)
            .await
            .unwrap();
        assert!(store.get_queue(&queue).await.unwrap().draw_complete);
        let admitted = store.admit(&queue, 5, None, 10_002).await.unwrap();
        assert_eq!(admitted.len(), 5);
    }

    /// A step that read the draw before a late sub-line's users were
    /// brought into it does not end it.
    #[tokio::test]
    async fn a_step_older_than_the_last_taking_up_does_not_end_the_draw() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 2, 20).await;
        assert!(!store.draw_step(&queue, "seed", 100, 10_000).await.unwrap());
        let link = store.link(&queue);
        let mut read = link.draw_head(&["seed", "seed"], 10_000).await.unwrap();
        let step: Vec<String> = (0..5).map(|_| read.string().unwrap()).collect();
        assert_eq!(step[0], "assigning");
        link.draw_head(&["open", "1", "1"], 10_001).await.unwrap();
        let mut ended = link
            .draw_head(&["done", step[4].as_str()], 10_002)
            .await
            .unwrap();
        assert_eq!(ended.u64().unwrap(), 0);
        while !store.draw_step(&queue, "seed", 100, 10_003).await.unwrap() {}
        assert!(store.get_queue(&queue).await.unwrap().draw_complete);
    }

    /// An opening with nobody pre-queued keeps no seed; a draw taken up
    /// again after it (someone pre-queued on a sub-line made again) draws
    /// under a seed chosen then, published as any other.
    #[tokio::test]
    async fn a_draw_taken_up_after_an_opening_with_nobody_to_draw_gets_a_seed() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 2, 0).await;
        let layout = store.link(&queue).layout().await.unwrap();
        store
            .enqueue(&queue, &one_of(&layout, "first", 0), 10_000)
            .await
            .unwrap();
        assert!(store.get_queue(&queue).await.unwrap().draw_complete);
        let remade = layout.keys("t", 1).unwrap();
        set_fields(&redis, &remade[0], &[("draw", "none".into())]);
        let skewed = one_of(&layout, "skewed", 1);
        store.enqueue(&queue, &skewed, 9_990).await.unwrap();
        while !store.draw_step(&queue, "later", 100, 10_010).await.unwrap() {}
        let config = store.get_queue(&queue).await.unwrap();
        assert!(config.draw_complete);
        assert_eq!(config.draw_seed.as_deref(), Some("later"));
        let drawn = store.place(&queue, &skewed, 10_020).await.unwrap().unwrap();
        assert!(
            matches!(drawn.state, PlaceState::Waiting { .. }),
            "{drawn:?}"
        );
    }

    /// A draw step placed on one sub-line and not yet on the others: a
    /// ticket it placed there may have lower tickets of the same step
    /// still to come on them. Neither a read of the store nor a replica's
    /// copy of the line shows it in line until every sub-line has placed
    /// the step, so no position shown rises when they have.
    #[tokio::test]
    async fn a_drawn_ticket_is_shown_in_line_only_once_every_sub_line_placed_its_step() {
        use std::sync::Arc;

        use tokio_stream::StreamExt;
        use tokio_util::sync::CancellationToken;

        use crate::domain::ManualClock;
        use crate::watch::WatchHub;

        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(store_on(&redis).await.with_sub_lines());
        let queue = opening_over(&store, 3, 40).await;
        let users: Vec<UserId> = (0..40)
            .map(|n| UserId::parse(&format!("early-{n}")).unwrap())
            .collect();
        // The opening, and every pre-queued user given a key.
        assert!(!store.draw_step(&queue, "seed", 100, 10_000).await.unwrap());
        let hub = WatchHub::new(
            Arc::clone(&store) as Arc<dyn QueueStore>,
            Arc::new(ManualClock::new(10_000)),
            Duration::from_millis(5),
            CancellationToken::new(),
        );
        let mut streams = Vec::new();
        for user in &users {
            let first = store.place(&queue, user, 10_000).await.unwrap().unwrap();
            assert_eq!(first.state, PlaceState::PreQueue { opens_in_ms: 0 });
            let permit = hub.reserve_stream(usize::MAX).unwrap();
            let mut stream = hub.watch(permit, queue.clone(), user.clone(), first, None);
            stream.next().await.unwrap().unwrap();
            streams.push((user.clone(), stream));
        }

        // The step's first twelve, placed on sub-line 0 only.
        let layout = first_step_on_sub_line_0(&store, &queue).await;
        let step = &draw_order("seed", &users)[..12];
        let on_zero: Vec<usize> = (0..12)
            .filter(|&i| layout.sub_line(&step[i]) == 0)
            .collect();
        // Someone placed on sub-line 0 above someone of another sub-line:
        // counted now, their position would rise.
        assert!(
            on_zero
                .iter()
                .any(|&i| (0..i).any(|j| layout.sub_line(&step[j]) != 0)),
            "{on_zero:?}"
        );
        for &i in &on_zero {
            let place = store
                .place(&queue, &step[i], 10_000)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (place.state, place.ticket),
                (PlaceState::PreQueue { opens_in_ms: 0 }, 0),
                "{}",
                step[i]
            );
        }
        let refreshed = hub.refreshes(&queue);
        tokio::time::timeout(Duration::from_secs(10), async {
            while hub.refreshes(&queue) < refreshed + 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the copy refreshed");
        for (user, stream) in &mut streams {
            while let Ok(Some(shown)) =
                tokio::time::timeout(Duration::from_millis(1), stream.next()).await
            {
                let shown = shown.unwrap();
                assert!(
                    !matches!(shown.state, PlaceState::Waiting { .. }),
                    "{user} shown {shown:?} before every sub-line placed its step"
                );
            }
        }

        // The draw finished by another replica: everyone is shown their
        // place, as the store holds it, and nobody's position rises.
        let other = store_on(&redis).await.with_sub_lines();
        while !other.draw_step(&queue, "other", 5, 10_001).await.unwrap() {}
        for (user, stream) in &mut streams {
            let truth = store.place(&queue, user, 10_002).await.unwrap().unwrap();
            let shown = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let place = stream.next().await.unwrap().unwrap();
                    if matches!(place.state, PlaceState::Waiting { .. }) {
                        break place;
                    }
                }
            })
            .await
            .expect("a place in line after the draw");
            assert_eq!(
                (shown.state, shown.ticket),
                (truth.state, truth.ticket),
                "{user}"
            );
        }
    }

    /// The first draw step of the forty pre-queued of `opening_over`, its
    /// keys given, cut short: twelve placed on sub-line 0 only.
    async fn first_step_on_sub_line_0(
        store: &crate::store::RedisStore,
        queue: &QueueId,
    ) -> std::sync::Arc<Layout> {
        let link = store.link(queue);
        let layout = link.layout().await.unwrap();
        let round = Round {
            read: "0".into(),
            pending: false,
            seed: "seed".into(),
            taken: "0".into(),
            end: 40,
        };
        assert!(
            !link
                .draw_places(&layout, 12, &round, 10_000, 1)
                .await
                .unwrap()
        );
        layout
    }

    /// The draw's round once it assigns tickets, the steps before it
    /// (the opening made again, keys given) taken by the store.
    async fn assigning(store: &crate::store::RedisStore, queue: &QueueId, now_ms: u64) -> Round {
        let link = store.link(queue);
        for _ in 0..4 {
            let reply = link.draw_head(&["seed", "other"], now_ms).await;
            if let Ok(mut reply) = reply
                && reply.string().unwrap() == "assigning"
            {
                return Round::read(&mut reply).unwrap();
            }
            store.draw_step(queue, "other", 100, now_ms).await.unwrap();
        }
        panic!("the draw does not assign tickets");
    }

    /// A queue over `shards` sub-lines opening at 10 s, with `early`
    /// users pre-queued at 1 s.
    async fn opening_over(store: &crate::store::RedisStore, shards: u32, early: usize) -> QueueId {
        let queue = QueueId::parse("drop").unwrap();
        let mut config = QueueConfig::new(queue.clone()).created(0);
        config.shards = shards;
        config.opens_at_ms = Some(10_000);
        config.prequeue_window = Duration::from_secs(60);
        store.create_queue(&config).await.unwrap();
        for n in 0..early {
            let user = UserId::parse(&format!("early-{n}")).unwrap();
            store.enqueue(&queue, &user, 1_000).await.unwrap();
        }
        queue
    }

    /// A draw step cut short after the head journalled its plan and one
    /// sub-line placed its part: the next step, on another replica, first
    /// carries out that plan as journalled, so everyone is placed once, at
    /// a ticket of the reservation, in the seed's order.
    #[tokio::test]
    async fn a_draw_step_cut_short_is_carried_out_as_journalled_by_the_next() {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await.with_sub_lines();
        let queue = opening_over(&store, 3, 40).await;
        let users: Vec<UserId> = (0..40)
            .map(|n| UserId::parse(&format!("early-{n}")).unwrap())
            .collect();
        // The opening, and every pre-queued user given a key.
        assert!(!store.draw_step(&queue, "seed", 100, 10_000).await.unwrap());
        first_step_on_sub_line_0(&store, &queue).await;
        let other = store_on(&redis).await.with_sub_lines();
        while !other.draw_step(&queue, "other", 5, 10_001).await.unwrap() {}
        let mut placed = Vec::new();
        for user in &users {
            let place = store.place(&queue, user, 10_002).await.unwrap().unwrap();
            assert!(
                matches!(place.state, PlaceState::Waiting { .. }),
                "{place:?}"
            );
            placed.push((place.ticket, user.clone()));
        }
        placed.sort();
        let tickets: Vec<u64> = placed.iter().map(|(ticket, _)| *ticket).collect();
        assert_eq!(tickets, (1..=40).collect::<Vec<u64>>());
        let order: Vec<UserId> = placed.into_iter().map(|(_, user)| user).collect();
        assert_eq!(order, draw_order("seed", &users));
        let config = store.get_queue(&queue).await.unwrap();
        assert!(config.draw_complete);
        assert_eq!(config.draw_seed.as_deref(), Some("seed"));
    }
}
