//! A scheduled opening of a queue over sub-lines (`docs/design.md`, "A
//! scheduled opening over sub-lines"): the memory store's opening of one
//! queue (`store/memory/opening.rs`), split between the sub-lines, which
//! hold the pre-queue and the draw's pool, and the head, which holds the
//! sequence (`draw_sub_line.lua`, `draw_head.lua`).
//!
//! - The opening: every sub-line's pre-queue frozen first, then the head
//!   reserves as many tickets as they hold, after every ticket leased; a
//!   sub-line's call that finds the opening due, or a lease asked after
//!   it, waits for both ([`SubLineLink::open`]). Nobody who joins after
//!   the opening therefore stands ahead of someone drawn, and nobody
//!   pre-queued is missed by the reservation.
//! - The draw: each sub-line gives its own pre-queued users their keys
//!   under the seed the head fixed; then each step merges the lowest keys
//!   of every sub-line's pool, and the head journals their tickets before
//!   any sub-line places anyone, so a step cut short is carried out as
//!   journalled by the next, and nobody gets two tickets.

use super::reply::{Reply, bad_reply};
use super::sub_lines::{Layout, SubLineLink};
use crate::Result;

impl SubLineLink<'_> {
    /// Makes the queue's opening, as every call does first once it is due
    /// (`prelude.lua`, `prepare`); a repeat finds it made.
    pub(super) async fn open(&self, now_ms: u64) -> Result<()> {
        let layout = self.layout().await?;
        let mut held = 0;
        for sub_line in 0..layout.shards as usize {
            held += self
                .draw_on(&layout, sub_line, &["close"], now_ms)
                .await?
                .u64()?;
        }
        let held = held.to_string();
        let mut reply = self.draw_head(&["open", held.as_str()], now_ms).await?;
        let state = match reply.string()?.as_str() {
            "done" => "done",
            _ => "frozen",
        };
        let last = reply.string()?;
        for sub_line in 0..layout.shards as usize {
            self.draw_on(&layout, sub_line, &["open", state, last.as_str()], now_ms)
                .await?;
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
                self.draw_done(layout, now_ms).await?;
                Ok(true)
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
            "assigning" => self.draw_places(layout, chunk, now_ms).await,
            other => Err(bad_reply(other)),
        }
    }

    /// Places the next `chunk` users by draw key over all sub-lines.
    async fn draw_places(&self, layout: &Layout, chunk: u32, now_ms: u64) -> Result<bool> {
        let most = chunk.to_string();
        // (key, user, sub-line): the order of `(key, user)`, as a sorted
        // set orders members of one score, and as the memory store's pool.
        let mut lowest: Vec<(u64, String, usize)> = Vec::new();
        for sub_line in 0..layout.shards as usize {
            let mut pool = self
                .draw_on(layout, sub_line, &["pool", most.as_str()], now_ms)
                .await?;
            while pool.remaining() > 0 {
                let user = pool.string()?;
                lowest.push((pool.u64()?, user, sub_line));
            }
        }
        if lowest.is_empty() {
            self.draw_done(layout, now_ms).await?;
            return Ok(true);
        }
        lowest.sort_unstable_by(|a, b| (a.0, a.1.as_bytes()).cmp(&(b.0, b.1.as_bytes())));
        lowest.truncate(chunk as usize);
        let sub_lines: Vec<String> = lowest.iter().map(|(_, _, s)| s.to_string()).collect();
        let mut args = vec!["plan"];
        for ((_, user, _), sub_line) in lowest.iter().zip(&sub_lines) {
            args.push(sub_line.as_str());
            args.push(user.as_str());
        }
        // The plan journalled: this one, or one another step left undone.
        let mut plan = self.draw_head(&args, now_ms).await?;
        let first = plan.string()?;
        let mut placed: Vec<Vec<String>> = vec![vec!["place".to_owned()]; layout.shards as usize];
        while plan.remaining() > 0 {
            let sub_line = plan.u64()? as usize;
            let (user, ticket) = (plan.string()?, plan.string()?);
            let args = placed
                .get_mut(sub_line)
                .ok_or_else(|| bad_reply("a plan's sub-line"))?;
            args.push(user);
            args.push(ticket);
        }
        let mut left = 0;
        for (sub_line, args) in placed.iter().enumerate() {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            left += self.draw_on(layout, sub_line, &args, now_ms).await?.u64()?;
        }
        self.draw_head(&["placed", first.as_str()], now_ms).await?;
        if left == 0 {
            self.draw_done(layout, now_ms).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Ends the draw: on every sub-line, then at the head, so a step cut
    /// short in between ends it again.
    async fn draw_done(&self, layout: &Layout, now_ms: u64) -> Result<()> {
        for sub_line in 0..layout.shards as usize {
            self.draw_on(layout, sub_line, &["done"], now_ms).await?;
        }
        self.draw_head(&["done"], now_ms).await?;
        Ok(())
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
