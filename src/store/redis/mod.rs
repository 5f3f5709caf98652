//! The Redis store: the production store, shared by every replica.
//!
//! # Data model
//!
//! A queue is sixteen keys under one hash tag (see [`keys`], whose table
//! names each): its config, a ticket sequence, a sorted set of waiting
//! users scored by ticket, a sorted set of admitted users scored by expiry,
//! a hash of admission records, counters, one-second admission buckets for
//! the observed rate, the results of recent `AdmitBatch` calls kept for
//! retries and when each lapses, the pre-queue and the opening draw's pool,
//! each waiting user's last sign of life, the log of changes to the line,
//! those cleared out of line, the sale's flow figures, and the highest
//! ticket given each second. Three more keys under the same tag outlive the
//! queue: the consumed token ids, who consumed each, and the mark a
//! `DeleteQueue` leaves (so a queue the store lost is told from one
//! deleted).
//!
//! # Layout
//!
//! - `lua`: the scripts, one per state transition (`scripts/*.lua`, each
//!   headed by its KEYS, ARGV and return value), and the constants they
//!   share with Rust;
//! - `topology`: where calls go: one Redis, a Cluster, or the master the
//!   Sentinels name, replaced when it is;
//! - `breaker`: every call bounded by the timeout and held back while
//!   Redis does not answer, its failure made a store error;
//! - `reply`: every script's answer, `{'ok', ...}` or `{reason}`, read by
//!   one function;
//! - `calls`: a script or a command run on the store's behalf;
//! - `listing`: queues listed from the index of ids, a page at a time;
//! - `fields`: the config hash written and read;
//! - `eviction`: whether Redis may evict waitroom's keys (`INFO memory`);
//! - `keys`: every key's name, and what each holds;
//! - `batch`: concurrent calls of one queue coalesced into one script call,
//!   and the caller a queue's batching task uses;
//! - `announce`: this instance's open streams, shared with the others for
//!   balancing;
//! - `sub_lines`: a queue over several sub-lines, its head in the queue's
//!   slot and each sub-line in its own; which calls go where;
//! - this file: the store, each method one script.
//!
//! Each transition is one script, so it is atomic across replicas without
//! `WATCH`/`MULTI` retries. Scripts take the caller's clock as an argument
//! and are safe to run twice: a retry after a dropped connection finds the
//! work done (or, for `AdmitBatch` and a consume, the first result under
//! the request id). Every call is bounded by the configured timeout and
//! any failure to get an answer becomes [`Error::Unavailable`].

#[cfg(feature = "testkit")]
pub use self::lua::{ENQUEUE_ONE, script_names};

mod announce;
mod batch;
mod breaker;
mod calls;
mod eviction;
mod fields;
mod keys;
mod listing;
pub(crate) mod lua;
mod opening;
mod reply;
mod rounds;
mod sub_lines;
mod topology;
mod turns;

use batch::Op;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;
use tokio_util::sync::CancellationToken;

use self::breaker::{Breaker, bounded, guard};
use self::fields::{config_fields, parse_config, update_fields};
use self::lua::Scripts;
use self::reply::{
    Reply, bad_reply, parse_admitted, parse_line_entry, parse_mode, parse_named, parse_place,
};
use self::sub_lines::{Layout, Layouts, routed};
use self::topology::Connector;
use super::QueueStore;
use crate::domain::{
    AdmissionCheck, AdmissionStatus, Admitted, DrawHold, Flow, LineChanges, LineSnapshot,
    LineSummary, NamedAdmission, Place, PlaceClaim, QueueConfig, QueueId, QueueStats, QueueUpdate,
    RateSample, RequestId, Restoration, UserId,
};
use crate::{Error, Result};

/// Users per `touch` script call.
pub(super) const TOUCH_CHUNK: usize = 5000;

/// How to reach Redis.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` for TLS. For a
    /// cluster, one or more seed nodes separated by commas.
    pub url: String,
    /// A password that overrides the URL's, so a secret need not be part of
    /// the URL.
    pub password: Option<String>,
    /// The URL names nodes of a Redis Cluster.
    pub cluster: bool,
    /// Prefix of every key, so several deployments can share a Redis.
    pub prefix: String,
    /// Longest wait for any Redis answer before the call is `UNAVAILABLE`.
    pub timeout: Duration,
    /// The URLs name Sentinels, which are asked for this master's address.
    /// The master is then reached with `password` (no user name), in
    /// database 0.
    pub sentinel_master: Option<String>,
    /// The Sentinels' own password, overriding one in their URLs.
    pub sentinel_password: Option<String>,
}

/// The Redis store. Cheap to share: one multiplexed connection that
/// reconnects by itself.
pub struct RedisStore {
    connector: Connector,
    prefix: String,
    timeout: Duration,
    scripts: Arc<Scripts>,
    batcher: batch::Batcher,
    breaker: Arc<Breaker>,
    /// Names this instance in its announcements.
    instance: String,
    /// The layouts of queues kept over sub-lines.
    layouts: Arc<Layouts>,
    /// Each queue over sub-lines' shared reads of places.
    rounds: Arc<rounds::Rounds>,
    /// Each sub-line's block as this store's last call of it left it.
    blocks: Arc<sub_lines::Blocks>,
    /// Each queue over sub-lines' admissions from this process, one at a
    /// time.
    turns: Arc<turns::Turns>,
    /// One sub-line resync at a time (`SubLineLink::value`): the calls
    /// that meet a sub-line in a new history meanwhile wait for it.
    resyncs: Arc<tokio::sync::Mutex<()>>,
    /// Whether queues may be made over sub-lines: only the calls of
    /// `sub_lines.rs` are served over them so far, so only tests make them.
    sub_lines: bool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects and checks that Redis answers.
    pub async fn connect(options: &RedisOptions) -> Result<Self> {
        let store = Self::connect_lazily(options)?;
        store.ping().await?;
        Ok(store)
    }

    /// Checks the URL now and connects on first use, reconnecting by itself
    /// whenever the connection is lost: a service may start before its
    /// Redis and ride out a Redis restart.
    pub fn connect_lazily(options: &RedisOptions) -> Result<Self> {
        let connector = Connector::from_options(options)?;
        Ok(Self {
            connector,
            prefix: options.prefix.clone(),
            timeout: options.timeout,
            scripts: Arc::new(Scripts::load()),
            batcher: batch::Batcher::default(),
            breaker: Arc::default(),
            instance: crate::domain::instance_id(),
            layouts: Arc::default(),
            rounds: Arc::default(),
            blocks: Arc::default(),
            turns: Arc::default(),
            resyncs: Arc::default(),
            sub_lines: false,
        })
    }

    /// Lets queues be made over several sub-lines (`Queue.shards` above
    /// 1), which this store serves (`--redis-sub-lines`).
    pub fn with_sub_lines(mut self) -> Self {
        self.sub_lines = true;
        self
    }

    fn keys(&self, queue: &QueueId) -> [String; keys::QUEUE_KEYS] {
        keys::queue_keys(&self.prefix, queue)
    }

    /// For the benchmark's Redis-side baseline, which runs a script of its
    /// own on the store's data: the source of a script whose body follows
    /// the constants and the prelude, and a queue's keys in the order every
    /// script takes them.
    #[cfg(feature = "testkit")]
    pub fn script_source(body: &str) -> String {
        lua::with_prelude_source(body)
    }

    /// The source of the script the service enqueues with, for the
    /// benchmark that drives it on its own.
    #[cfg(feature = "testkit")]
    pub fn enqueue_many_source() -> String {
        lua::enqueue_many_source()
    }

    /// How many parts of `queue`'s reads of places rode on a join call.
    #[cfg(feature = "testkit")]
    pub fn rides(&self, queue: &QueueId) -> usize {
        self.rounds.rides(queue)
    }

    #[cfg(feature = "testkit")]
    pub fn queue_keys(&self, queue: &QueueId) -> [String; keys::QUEUE_KEYS] {
        self.keys(queue)
    }

    /// Journals an admission of up to `max_count` of a queue over
    /// sub-lines under `request` at the head, and stops there, as a
    /// replica that stops before its pops leaves it: the next admission
    /// must finish it first.
    #[cfg(feature = "testkit")]
    pub async fn plan_admission_and_stop(
        &self,
        queue: &QueueId,
        max_count: u32,
        request: &RequestId,
        now_ms: u64,
    ) -> Result<()> {
        self.admit_as(queue, max_count, request, now_ms, sub_lines::Until::Planned)
            .await
            .map(drop)
    }

    /// An `AdmitBatch` over sub-lines carried out as far as `until` says.
    #[cfg(feature = "testkit")]
    async fn admit_as(
        &self,
        queue: &QueueId,
        max_count: u32,
        request: &RequestId,
        now_ms: u64,
        until: sub_lines::Until,
    ) -> Result<Vec<Admitted>> {
        let link = self.link(queue);
        let layout = link.layout().await?;
        link.admit_until(&layout, max_count, Some(request), false, now_ms, until)
            .await
    }

    /// A script of one user answering a flag (`leave.lua`, `complete.lua`:
    /// ARGV now, user), on the queue's one slot or the user's sub-line.
    async fn user_step(
        &self,
        operation: &'static str,
        script: &redis::Script,
        queue: &QueueId,
        user: &UserId,
        now_ms: u64,
    ) -> Result<bool> {
        let link = &self.link(queue);
        routed(
            link,
            || async {
                let mut invocation = self.invocation(script, queue, now_ms);
                invocation.arg(user.as_str());
                self.run(operation, queue, &invocation).await?.flag()
            },
            |layout| async move {
                link.user_flag(operation, script, &layout, user, now_ms)
                    .await
            },
        )
        .await
    }

    /// A bounded step (`reap.lua`, `clear_step.lua`: ARGV now, limit;
    /// answering how many it took): on the queue's one slot, or sub-line
    /// by sub-line (0 first) up to the limit in all.
    async fn step_over_sub_lines(
        &self,
        operation: &'static str,
        script: &redis::Script,
        queue: &QueueId,
        limit: u32,
        now_ms: u64,
    ) -> Result<u64> {
        let link = &self.link(queue);
        routed(
            link,
            || async {
                let mut invocation = self.invocation(script, queue, now_ms);
                invocation.arg(limit);
                self.run(operation, queue, &invocation).await?.u64()
            },
            |layout| async move {
                let mut taken = 0;
                for sub_line in 0..layout.shards as usize {
                    let left = u64::from(limit).saturating_sub(taken);
                    if left == 0 {
                        break;
                    }
                    taken += link
                        .on_sub_line(
                            operation,
                            script,
                            &layout,
                            sub_line,
                            &[left.to_string().as_str()],
                            now_ms,
                        )
                        .await?
                        .u64()?;
                }
                Ok(taken)
            },
        )
        .await
    }

    /// An `AdmitBatch` of a queue over sub-lines that waits `pause` after
    /// its begin, as a slow replica's does.
    #[cfg(feature = "testkit")]
    pub async fn admit_slowly(
        &self,
        queue: &QueueId,
        max_count: u32,
        request: &RequestId,
        now_ms: u64,
        pause: Duration,
    ) -> Result<Vec<Admitted>> {
        let until = sub_lines::Until::SettledAfter(pause);
        self.admit_as(queue, max_count, request, now_ms, until)
            .await
    }

    /// Journals an `AdmitUsers` of a queue over sub-lines at the head and
    /// stops there, as [`Self::plan_admission_and_stop`] does.
    #[cfg(feature = "testkit")]
    pub async fn plan_admit_users_and_stop(
        &self,
        queue: &QueueId,
        users: &[UserId],
        request: &RequestId,
        now_ms: u64,
    ) -> Result<()> {
        let link = self.link(queue);
        let layout = link.layout().await?;
        link.admit_users(
            &layout,
            users,
            request,
            false,
            now_ms,
            sub_lines::Until::Planned,
        )
        .await
        .map(drop)
    }

    /// A step of `used_token.lua` on the queue's consumed token ids:
    /// `None` when the token is not consumed and the step only looked.
    async fn used_token(
        &self,
        queue: &QueueId,
        step: &str,
        check: &AdmissionCheck,
        consume: &crate::domain::Consume,
        now_ms: u64,
    ) -> Result<Option<AdmissionStatus>> {
        let mut invocation = self.scripts.used_token.prepare_invoke();
        for key in keys::used_tokens_keys(&self.prefix, queue) {
            invocation.key(key);
        }
        invocation
            .arg(now_ms)
            .arg(step)
            .arg(&check.token_id)
            .arg(consume.request.as_str())
            .arg(consume.remember_until_ms);
        let status = self
            .run("check_admission", queue, &invocation)
            .await?
            .string()?;
        match status.as_str() {
            "none" => Ok(None),
            other => admission_status(other).map(Some),
        }
    }
}

impl RedisStore {
    /// Where a queue of `shards` sub-lines is placed: on a Cluster, spread
    /// over its nodes by the slot map as it is now; on one Redis, plain
    /// tags.
    async fn placed(&self, queue: &QueueId, shards: u32) -> Result<Layout> {
        let owners = self.slot_owners().await?;
        Ok(Layout::new(queue, shards, |slot| {
            sub_lines::owner_of(&owners, slot)
        }))
    }

    /// Which node owns each slot range (none on one Redis).
    async fn slot_owners(&self) -> Result<Vec<(u16, u16, usize)>> {
        Ok(match self.connection().await? {
            topology::Connection::Cluster(_) => sub_lines::slot_owners(
                &self
                    .command::<Value>("slot_owners", redis::cmd("CLUSTER").arg("SLOTS"))
                    .await?,
            )?,
            topology::Connection::Single(..) => Vec::new(),
        })
    }

    /// The sub-lines of `queue` that stand, by their number, each with the
    /// latest epoch of the queue they hold. The number went with a lost
    /// head: each number's sub-lines are asked for, placed as the creation
    /// placed them.
    async fn sub_lines_standing(&self, queue: &QueueId) -> Result<Vec<(u64, Layout)>> {
        let owners = self.slot_owners().await?;
        let mut standing = Vec::new();
        for shards in 2..=crate::domain::shards::MAX_SHARDS {
            let layout = Layout::new(queue, shards, |slot| sub_lines::owner_of(&owners, slot));
            if let Some(epoch) = self.sub_lines_epoch("sub_lines_standing", &layout).await? {
                standing.push((epoch, layout));
            }
        }
        Ok(standing)
    }

    /// The latest epoch the sub-lines of `layout` stand in (each one's
    /// copy of the config), if any stands: every sub-line is asked, at
    /// once, as any of them may have been lost with the head.
    async fn sub_lines_epoch(
        &self,
        operation: &'static str,
        layout: &Layout,
    ) -> Result<Option<u64>> {
        let reads = (0..layout.shards as usize)
            .map(|sub_line| {
                let config = &layout.keys(&self.prefix, sub_line)?[0];
                let mut read = redis::cmd("HGET");
                read.arg(config).arg("created_at_ms");
                Ok(read)
            })
            .collect::<Result<Vec<redis::Cmd>>>()?;
        let epochs = futures_util::future::join_all(
            reads
                .iter()
                .map(|read| self.command::<Option<u64>>(operation, read)),
        )
        .await;
        let mut latest = None;
        for epoch in epochs {
            latest = latest.max(epoch?);
        }
        Ok(latest)
    }

    /// Adds `queue` to the index of queues.
    async fn index_add(&self, queue: &QueueId) -> Result<()> {
        self.command::<i64>(
            "index_add",
            redis::cmd("SADD")
                .arg(keys::index_key(&self.prefix))
                .arg(queue.as_str()),
        )
        .await
        .map(drop)
    }

    /// Writes a queue's head (`create_queue.lua`) with `fields`, unless
    /// the queue exists (`QueueAlreadyExists`); the queue's epoch, later
    /// than a deleted one's of the same name.
    async fn write_head(
        &self,
        queue: &QueueId,
        fields: &[(&'static str, String)],
        now_ms: u64,
    ) -> Result<u64> {
        let mut invocation = self.invocation(&self.scripts.create_queue, queue, now_ms);
        invocation.key(keys::deleted_key(&self.prefix, queue));
        for (field, value) in fields {
            invocation.arg(*field).arg(value);
        }
        self.run("create_queue", queue, &invocation).await?.u64()
    }

    /// Makes the lost head of a queue over the sub-lines of `layout` again
    /// from them, when every one stands, of `epoch_ms` when given
    /// (`SubLineLink::head_from_sub_lines`): the queue as it was, or
    /// `None`.
    async fn head_again(
        &self,
        queue: &QueueId,
        layout: &Layout,
        epoch_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<QueueConfig>> {
        let link = self.link(queue);
        let Some(again) = link.head_from_sub_lines(layout, epoch_ms, now_ms).await? else {
            return Ok(None);
        };
        let head: HashMap<String, String> = again
            .fields
            .iter()
            .map(|(field, value)| ((*field).to_owned(), value.clone()))
            .collect();
        // A sub-line an update had not reached takes its settings first:
        // the queue comes back whole.
        link.copy_settings(layout, &head, now_ms).await?;
        // The lost queue's places given back before the head is: a
        // receipt the head then meets is decided by them.
        for chunk in again.given_back.chunks(1_000) {
            self.command::<i64>(
                "create_queue",
                redis::cmd("SADD")
                    .arg(keys::given_back_key(&self.prefix, queue))
                    .arg(chunk),
            )
            .await?;
        }
        self.write_head(queue, &again.fields, now_ms).await?;
        // Its open blocks hold the watermark back at once (and the history
        // is recorded), not at the first lease. The head is made either
        // way: until a resync records its history, every lease and
        // admission is answered 'resync' and makes one first, so one that
        // fails here (a sub-line slow to answer) is only made later, and
        // the queue is not reported lost a second time.
        if let Err(error) = link.resync(now_ms).await {
            tracing::warn!(queue = %queue, %error, "a head made again is resynced at its first lease");
        }
        Ok(Some(again.config))
    }
}

#[async_trait]
impl QueueStore for RedisStore {
    async fn create_queue(&self, config: &QueueConfig) -> Result<QueueConfig> {
        if config.shards != 1 && !self.sub_lines {
            // Sub-lines are a preview the operator turns on
            // (`--redis-sub-lines`).
            return Err(Error::InvalidArgument {
                field: "queue.shards".into(),
                reason: format!(
                    "this store keeps a queue in one slot; {} sub-lines are served only with --redis-sub-lines",
                    config.shards
                ),
            });
        }
        self.index_add(&config.id).await?;
        let layout = match config.shards {
            0 | 1 => None,
            shards => Some(self.placed(&config.id, shards).await?),
        };
        // A queue made again after a loss whose sub-lines all stand lost
        // only its head: it is made again from them, as it was.
        if let (Some(layout), Some(adoption)) = (&layout, config.adoption)
            && let Some(kept) = self
                .head_again(
                    &config.id,
                    layout,
                    // The lost queue's epoch when this replica knew it.
                    Some(adoption.epoch_ms).filter(|epoch| *epoch != 0),
                    config.created_at_ms,
                )
                .await?
        {
            return Ok(kept);
        }
        let mut fields = config_fields(config);
        if let Some(layout) = &layout {
            fields.push(("sub_lines", layout.head_field()));
        }
        let epoch_ms = self
            .write_head(&config.id, &fields, config.created_at_ms)
            .await?;
        let config = &QueueConfig {
            created_at_ms: epoch_ms,
            ..config.clone()
        };
        // The head decides whether the queue was made; each sub-line then
        // takes a copy of its config, over whatever its slot still holds
        // (`create_queue.lua`, `made_anew`).
        for sub_line in 0..layout.as_ref().map_or(0, |l| l.shards as usize) {
            let Some(layout) = &layout else { break };
            self.link(&config.id)
                .make_sub_line(layout, sub_line, config, &[], true)
                .await?;
        }
        // From now on a sub-line found holding no queue was lost, not
        // yet made (`SubLineLink::remake_sub_line`).
        if layout.is_some() {
            self.command::<i64>(
                "create_queue",
                redis::cmd("HSET")
                    .arg(&self.keys(&config.id)[0])
                    .arg("sub_lines_made")
                    .arg(1),
            )
            .await?;
        }
        Ok(config.clone())
    }

    async fn queue_lost(&self, queue: &QueueId) -> Result<bool> {
        let found: i64 = self
            .command(
                "queue_lost",
                redis::cmd("EXISTS")
                    .arg(&self.keys(queue)[0])
                    .arg(keys::deleted_key(&self.prefix, queue)),
            )
            .await?;
        Ok(found == 0)
    }

    async fn remake_from_parts(
        &self,
        queue: &QueueId,
        epoch_ms: u64,
        now_ms: u64,
    ) -> Result<Option<QueueConfig>> {
        if !self.sub_lines || !self.queue_lost(queue).await? {
            return Ok(None);
        }
        // Sub-lines of an earlier queue of the same name, under another
        // number, may stand too: only the lost queue's own are made again.
        for (epoch, layout) in self.sub_lines_standing(queue).await? {
            if epoch != epoch_ms {
                continue;
            }
            self.index_add(queue).await?;
            return match self
                .head_again(queue, &layout, Some(epoch_ms), now_ms)
                .await
            {
                // Another replica made it first: it is back all the same
                // (or deleted since: not made).
                Err(Error::QueueAlreadyExists(_)) => match self.get_queue(queue).await {
                    Err(Error::QueueNotFound(_)) => Ok(None),
                    found => found.map(Some),
                },
                made => made,
            };
        }
        Ok(None)
    }

    async fn get_queue(&self, queue: &QueueId) -> Result<QueueConfig> {
        let fields: HashMap<String, String> = self
            .command("get_queue", redis::cmd("HGETALL").arg(&self.keys(queue)[0]))
            .await?;
        parse_config(queue, fields)?.ok_or_else(|| Error::QueueNotFound(queue.to_string()))
    }

    async fn list_queues(&self, after: Option<&QueueId>, limit: usize) -> Result<Vec<QueueConfig>> {
        self.list_page(after, limit).await
    }

    async fn update_queue(
        &self,
        queue: &QueueId,
        update: &QueueUpdate,
        now_ms: u64,
    ) -> Result<QueueConfig> {
        let changes = &update_fields(update, now_ms);
        let read = |mut reply: Reply| -> Result<HashMap<String, String>> {
            let mut fields = HashMap::new();
            while reply.remaining() > 0 {
                fields.insert(reply.string()?, reply.string()?);
            }
            Ok(fields)
        };
        let link = &self.link(queue);
        let fields = routed(
            link,
            || async {
                let mut invocation = self.invocation(&self.scripts.update_queue, queue, now_ms);
                for (field, value) in changes {
                    invocation.arg(*field).arg(value);
                }
                read(self.run("update_queue", queue, &invocation).await?)
            },
            |layout| async move {
                // The head first, then each sub-line's copy of its
                // settings as of its version.
                let mut invocation = self.invocation(&self.scripts.head_update, queue, now_ms);
                for (field, value) in changes {
                    invocation.arg(*field).arg(value);
                }
                let fields = read(self.run("update_queue", queue, &invocation).await?)?;
                link.copy_settings(&layout, &fields, now_ms).await?;
                Ok(fields)
            },
        )
        .await?;
        parse_config(queue, fields)?.ok_or_else(|| Error::QueueNotFound(queue.to_string()))
    }

    async fn delete_queue(&self, queue: &QueueId) -> Result<()> {
        // The index forgets the id once the queue is gone, or was already
        // (a delete that stopped half-way); not when the store did not
        // answer, since the queue may still be there.
        // A queue over sub-lines loses its sub-lines first: a delete that
        // stops half-way leaves a head, which a new delete finds.
        // Each with the latest epoch its sub-lines stand in, which the
        // deletion mark keeps (`create_queue.lua`), the head lost or not.
        let layouts: Vec<(Option<u64>, Arc<Layout>)> = match self.link(queue).layout().await {
            // A layout known from a moment ago does not say whether the
            // head is lost: the sub-lines are asked.
            Ok(layout) if layout.shards > 1 => {
                vec![(self.sub_lines_epoch("delete_queue", &layout).await?, layout)]
            }
            // The head lost: whatever sub-lines of the name stand, which a
            // making again from its parts would otherwise bring back.
            Err(Error::QueueNotFound(_)) if self.sub_lines => self
                .sub_lines_standing(queue)
                .await?
                .into_iter()
                .map(|(epoch, layout)| (Some(epoch), Arc::new(layout)))
                .collect(),
            _ => Vec::new(),
        };
        let epoch_ms = layouts
            .iter()
            .filter_map(|(epoch, _)| *epoch)
            .max()
            .unwrap_or(0);
        for (_, layout) in &layouts {
            for sub_line in 0..layout.shards as usize {
                let keys = layout.keys(&self.prefix, sub_line)?;
                let given_back = keys::tagged_given_back_key(&self.prefix, layout.tag(sub_line)?);
                self.command::<i64>(
                    "delete_queue",
                    redis::cmd("UNLINK").arg(&keys[..]).arg(given_back),
                )
                .await?;
            }
        }
        if !layouts.is_empty() {
            self.command::<i64>(
                "delete_queue",
                redis::cmd("UNLINK")
                    .arg(keys::leases_key(&self.prefix, queue))
                    .arg(keys::recently_admitted_key(&self.prefix, queue))
                    .arg(keys::given_to_key(&self.prefix, queue)),
            )
            .await?;
        }
        self.layouts.forget(queue);
        self.rounds.forget(queue);
        self.blocks.forget(queue);
        self.turns.forget(queue);
        let mut invocation = self.invocation(&self.scripts.delete_queue, queue, 0);
        invocation
            .key(keys::deleted_key(&self.prefix, queue))
            .key(keys::given_back_key(&self.prefix, queue))
            .arg(epoch_ms);
        let deleted = self.run("delete_queue", queue, &invocation).await;
        if let Err(error) = &deleted
            && !matches!(error, Error::QueueNotFound(_))
        {
            return deleted.map(drop);
        }
        self.command::<i64>(
            "index_remove",
            redis::cmd("SREM")
                .arg(keys::index_key(&self.prefix))
                .arg(queue.as_str()),
        )
        .await?;
        deleted.map(drop)
    }

    async fn enqueue(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Place> {
        self.batcher
            .call(
                (queue.clone(), Op::Enqueue, self.lane(queue, user)),
                || self.caller(queue),
                user,
                now_ms,
                self.timeout,
            )
            .await?
            .ok_or_else(|| bad_reply("enqueue returned no place"))
    }

    async fn enqueue_many(
        &self,
        queue: &QueueId,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<Vec<Result<Place>>> {
        self.caller(queue).await?.enqueue_many(users, now_ms).await
    }

    async fn places(
        &self,
        queue: &QueueId,
        users: &[UserId],
        touch: bool,
        now_ms: u64,
    ) -> Result<Vec<Option<Place>>> {
        self.caller(queue).await?.places(users, touch, now_ms).await
    }

    async fn place(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<Option<Place>> {
        self.batcher
            .call(
                (queue.clone(), Op::Place, self.lane(queue, user)),
                || self.caller(queue),
                user,
                now_ms,
                self.timeout,
            )
            .await
    }

    async fn restore(
        &self,
        queue: &QueueId,
        user: &UserId,
        claim: &PlaceClaim,
        now_ms: u64,
    ) -> Result<Restoration> {
        let link = &self.link(queue);
        routed(
            link,
            || async {
                let mut invocation = self.invocation(&self.scripts.restore, queue, now_ms);
                invocation
                    .key(keys::given_back_key(&self.prefix, queue))
                    .arg(user.as_str())
                    .arg(claim.epoch_ms)
                    .arg(claim.ticket)
                    .arg(claim.head)
                    .arg(claim.top)
                    .arg(claim.issued_ms);
                let mut reply = self.run("restore", queue, &invocation).await?;
                let value = reply.next_value()?;
                if let Value::BulkString(outcome) = &value {
                    return sub_lines::refused_restore(outcome);
                }
                parse_place(value, queue)?
                    .map(Restoration::Restored)
                    .ok_or_else(|| bad_reply("a place given back is not there"))
            },
            |layout| async move { link.restore(&layout, user, claim, now_ms).await },
        )
        .await
    }

    async fn touch(&self, queue: &QueueId, users: &[UserId], now_ms: u64) -> Result<()> {
        let link = &self.link(queue);
        routed(
            link,
            || async {
                for chunk in users.chunks(TOUCH_CHUNK) {
                    let mut invocation = self.invocation(&self.scripts.touch, queue, now_ms);
                    for user in chunk {
                        invocation.arg(user.as_str());
                    }
                    self.run("touch", queue, &invocation).await?;
                }
                Ok(())
            },
            |layout| async move { link.touch(&layout, users, now_ms).await },
        )
        .await
    }

    async fn reap(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64> {
        self.step_over_sub_lines("reap", &self.scripts.reap, queue, limit, now_ms)
            .await
    }

    async fn line_snapshot(
        &self,
        queue: &QueueId,
        sub_line: u32,
        after: u64,
        limit: u32,
    ) -> Result<LineSnapshot> {
        let link = &self.link(queue);
        let (after, limit) = (&after.to_string(), &limit.to_string());
        let read = |mut reply: Reply, shards: u32| -> Result<LineSnapshot> {
            let epoch_ms = reply.u64()?;
            let seq = reply.u64()?;
            let held = DrawHold {
                above: reply.u64()?,
                through: reply.u64()?,
            };
            let mut tickets = Vec::with_capacity(reply.remaining());
            while reply.remaining() > 0 {
                tickets.push(reply.u64()?);
            }
            Ok(LineSnapshot {
                epoch_ms,
                seq,
                tickets,
                shards,
                held,
            })
        };
        routed(
            link,
            || async {
                one_slot(sub_line)?;
                let mut invocation = self.invocation(&self.scripts.line_snapshot, queue, 0);
                invocation.arg(after).arg(limit);
                read(self.run("line_snapshot", queue, &invocation).await?, 1)
            },
            |layout| async move {
                let reply = link
                    .on_sub_line(
                        "line_snapshot",
                        &self.scripts.line_snapshot,
                        &layout,
                        sub_line as usize,
                        &[after.as_str(), limit.as_str()],
                        0,
                    )
                    .await?;
                read(reply, layout.shards)
            },
        )
        .await
    }

    async fn line_changes(
        &self,
        queue: &QueueId,
        sub_line: u32,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<LineChanges> {
        let link = &self.link(queue);
        let (after, limit) = (&after.to_string(), &limit.to_string());
        routed(
            link,
            || async {
                one_slot(sub_line)?;
                let mut invocation = self.invocation(&self.scripts.line_changes, queue, now_ms);
                invocation.arg(after).arg(limit);
                read_changes(self.run("line_changes", queue, &invocation).await?, 1)
            },
            |layout| async move {
                let reply = link
                    .on_sub_line(
                        "line_changes",
                        &self.scripts.line_changes,
                        &layout,
                        sub_line as usize,
                        &[after.as_str(), limit.as_str()],
                        now_ms,
                    )
                    .await?;
                let mut changes = read_changes(reply, layout.shards)?;
                // The summary is the queue's: everyone in line, over every
                // sub-line, and the admissions the head counts.
                let view = link.view(&layout, &[], now_ms).await?;
                changes.summary.prequeued = view.prequeued;
                changes.summary.waiting = view.in_line.saturating_sub(view.prequeued);
                view.sample.apply(&mut changes.summary.rate);
                Ok(changes)
            },
        )
        .await
    }

    async fn draw_step(
        &self,
        queue: &QueueId,
        seed: &str,
        chunk: u32,
        now_ms: u64,
    ) -> Result<bool> {
        let link = &self.link(queue);
        routed(
            link,
            || async {
                let mut invocation = self.invocation(&self.scripts.draw_step, queue, now_ms);
                invocation.arg(seed).arg(chunk);
                self.run("draw_step", queue, &invocation).await?.flag()
            },
            |layout| async move { link.draw_step(&layout, seed, chunk, now_ms).await },
        )
        .await
    }

    async fn leave(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool> {
        self.user_step("leave", &self.scripts.leave, queue, user, now_ms)
            .await
    }

    async fn admit(
        &self,
        queue: &QueueId,
        max_count: u32,
        request: Option<&RequestId>,
        now_ms: u64,
    ) -> Result<Vec<Admitted>> {
        let link = &self.link(queue);
        routed(
            link,
            || async {
                let mut invocation = self.invocation(&self.scripts.admit, queue, now_ms);
                invocation
                    .arg(max_count)
                    .arg(request.map_or("", RequestId::as_str))
                    .arg(request.map_or(0, super::batch_result_ttl_ms));
                parse_admitted(self.run("admit", queue, &invocation).await?)
            },
            |layout| async move {
                let turn = self.turns.take(queue, self.timeout).await?;
                link.admit(&layout, max_count, request, false, turn.now_ms(now_ms))
                    .await
            },
        )
        .await
    }

    async fn admit_due(
        &self,
        queue: &QueueId,
        max_count: u32,
        now_ms: u64,
    ) -> Result<Vec<Admitted>> {
        let link = &self.link(queue);
        routed(
            link,
            || async {
                let mut invocation = self.invocation(&self.scripts.admit_due, queue, now_ms);
                invocation.arg(max_count);
                parse_admitted(self.run("admit_due", queue, &invocation).await?)
            },
            |layout| async move {
                // Not a whole timeout: the admitter steps every queue in
                // turn. What is due is admitted at its next pass.
                let Some(turn) = self.turns.within(queue, self.timeout / 4).await? else {
                    return Ok(Vec::new());
                };
                link.admit(&layout, max_count, None, true, turn.now_ms(now_ms))
                    .await
            },
        )
        .await
    }

    async fn admit_users(
        &self,
        queue: &QueueId,
        users: &[UserId],
        request: &RequestId,
        override_capacity: bool,
        now_ms: u64,
    ) -> Result<Vec<NamedAdmission>> {
        let link = &self.link(queue);
        routed(
            link,
            || async {
                let mut invocation = self.invocation(&self.scripts.admit_users, queue, now_ms);
                invocation
                    .arg(request.as_str())
                    .arg(super::batch_result_ttl_ms(request))
                    .arg(if override_capacity { "1" } else { "0" });
                for user in users {
                    invocation.arg(user.as_str());
                }
                parse_named(self.run("admit_users", queue, &invocation).await?)
            },
            |layout| async move {
                let turn = self.turns.take(queue, self.timeout).await?;
                link.admit_users(
                    &layout,
                    users,
                    request,
                    override_capacity,
                    turn.now_ms(now_ms),
                    sub_lines::Until::Settled,
                )
                .await
            },
        )
        .await
    }

    async fn clear_step(&self, queue: &QueueId, limit: u32, now_ms: u64) -> Result<u64> {
        self.step_over_sub_lines("clear_step", &self.scripts.clear_step, queue, limit, now_ms)
            .await
    }

    async fn complete(&self, queue: &QueueId, user: &UserId, now_ms: u64) -> Result<bool> {
        self.user_step("complete", &self.scripts.complete, queue, user, now_ms)
            .await
    }

    async fn check_admission(
        &self,
        queue: &QueueId,
        check: &AdmissionCheck,
        now_ms: u64,
    ) -> Result<AdmissionStatus> {
        let mut args = vec![
            check.user.as_str().to_owned(),
            check.token_id.clone(),
            check.queue_epoch_ms.to_string(),
            check.ticket.to_string(),
            check
                .admitted_at_ms
                .map_or(String::new(), |at| at.to_string()),
        ];
        match &check.consume {
            Some(consume) => args.extend([
                "1".to_owned(),
                consume.remember_until_ms.to_string(),
                consume.request.as_str().to_owned(),
            ]),
            None => args.extend(["0".to_owned(), "0".to_owned(), String::new()]),
        }
        let args = &args;
        routed(
            &self.link(queue),
            || {
                check_in_with(
                    self,
                    queue,
                    self.keys(queue),
                    keys::used_tokens_keys(&self.prefix, queue),
                    args,
                    now_ms,
                )
            },
            |layout| async move {
                // The admission is checked in the user's sub-line; the
                // token ids consumed are the queue's, under its own tag,
                // before and after (the first request to record one
                // consumed it).
                let consume = check.consume.as_ref();
                if let Some(consume) = consume {
                    match self
                        .used_token(queue, "seen", check, consume, now_ms)
                        .await?
                    {
                        None => {}
                        Some(status) => return Ok(status),
                    }
                }
                let mut held_args = args[..5].to_vec();
                held_args.extend(["0".to_owned(), "0".to_owned(), String::new()]);
                let status = self
                    .link(queue)
                    .check_held(&layout, &check.user, &held_args, now_ms)
                    .await?;
                match (status, consume) {
                    (AdmissionStatus::Held, Some(consume)) => Ok(self
                        .used_token(queue, "record", check, consume, now_ms)
                        .await?
                        .unwrap_or(AdmissionStatus::Held)),
                    (status, _) => Ok(status),
                }
            },
        )
        .await
    }

    async fn stats(&self, queue: &QueueId, now_ms: u64) -> Result<QueueStats> {
        let link = &self.link(queue);
        routed(
            link,
            || async {
                read_stats(
                    self.run(
                        "stats",
                        queue,
                        &self.invocation(&self.scripts.stats, queue, now_ms),
                    )
                    .await?,
                    now_ms,
                )
            },
            |layout| async move {
                let mut stats: Option<QueueStats> = None;
                for sub_line in 0..layout.shards as usize {
                    let reply = link
                        .on_sub_line("stats", &self.scripts.stats, &layout, sub_line, &[], now_ms)
                        .await?;
                    let part = read_stats(reply, now_ms)?;
                    match &mut stats {
                        None => stats = Some(part),
                        Some(stats) => sub_lines::add_stats(stats, &part),
                    }
                }
                let mut stats = stats.ok_or_else(|| bad_reply("a queue of no sub-lines"))?;
                link.add_head_stats(&mut stats, now_ms).await?;
                Ok(stats)
            },
        )
        .await
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self.command("ping", &redis::cmd("PING")).await?;
        Ok(())
    }

    async fn share_load(
        &self,
        instance: &str,
        streams: Option<u64>,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<u64>> {
        let mut invocation = self.scripts.share_load.prepare_invoke();
        invocation
            .key(keys::instances_key(&self.prefix))
            .arg(instance)
            .arg(streams.map_or_else(String::new, |s| s.to_string()))
            .arg(ttl_ms)
            .arg(now_ms);
        let mut conn = self.connection().await?;
        bounded(
            "share_load",
            self.timeout,
            guard(&self.breaker, &self.connector, &conn, None),
            invocation.invoke_async(&mut conn),
        )
        .await
    }

    async fn announce(&self, queue: &QueueId) {
        self.publish(queue).await;
    }

    async fn hear_announcements(&self, heard: crate::store::Announced, stop: CancellationToken) {
        self.subscribe(heard, stop).await;
    }

    async fn setup_problem(&self) -> Result<Option<String>> {
        // INFO rather than CONFIG GET: managed Redis services often rename
        // or refuse CONFIG. On a Cluster the answer is every node's.
        let info: Value = self
            .command("info", redis::cmd("INFO").arg("memory"))
            .await?;
        Ok(eviction::problem(&info))
    }
}

/// Runs `check_admission.lua` on `keys` (a queue's one slot or a user's
/// sub-line) with the used-token keys `used`.
async fn check_in_with(
    store: &RedisStore,
    queue: &QueueId,
    keys: [String; keys::QUEUE_KEYS],
    used: [String; 2],
    args: &[String],
    now_ms: u64,
) -> Result<AdmissionStatus> {
    let mut invocation = store.scripts.check_admission.prepare_invoke();
    for key in keys.iter().chain(&used) {
        invocation.key(key);
    }
    invocation.arg(now_ms);
    for arg in args {
        invocation.arg(arg);
    }
    let status = store
        .run("check_admission", queue, &invocation)
        .await?
        .string()?;
    admission_status(&status)
}

fn admission_status(status: &str) -> Result<AdmissionStatus> {
    match status {
        "held" => Ok(AdmissionStatus::Held),
        "used" => Ok(AdmissionStatus::Used),
        "revoked" => Ok(AdmissionStatus::Revoked),
        other => Err(bad_reply(other)),
    }
}

/// Reads `stats.lua`'s answer.
fn read_stats(mut reply: Reply, now_ms: u64) -> Result<QueueStats> {
    let mut stats = QueueStats {
        waiting: reply.u64()?,
        active: reply.u64()?,
        enqueued: reply.u64()?,
        admitted: reply.u64()?,
        completed: reply.u64()?,
        expired: reply.u64()?,
        left: reply.u64()?,
        abandoned: reply.u64()?,
        prequeued: reply.u64()?,
        rate: RateSample {
            admitted: reply.u64()?,
            span_ms: reply.u64()?,
            recent: 0,
            abandoned: 0,
            configured: 0,
        },
        cleared: reply.u64()?,
        flow: Flow::default(),
    };
    stats.rate.recent = reply.u64()?;
    stats.rate.abandoned = reply.u64()?;
    stats.rate.configured = reply.u32()?;
    stats.flow.arrived = reply.u64()?;
    stats.flow.span_ms = crate::domain::flow_span_ms(now_ms);
    while reply.remaining() > 0 {
        stats.flow.waited.push(reply.u64()?);
    }
    Ok(stats)
}

/// Reads `line_changes.lua`'s answer for a queue of `shards` sub-lines.
fn read_changes(mut reply: Reply, shards: u32) -> Result<LineChanges> {
    let seq = reply.u64()?;
    let complete = reply.u64()? == 1;
    let mode = parse_mode(&reply.string()?)?;
    let waiting = reply.u64()?;
    let prequeued = reply.u64()?;
    let opens_at_ms = Some(reply.u64()?).filter(|at| *at > 0);
    let draw = reply.string()?;
    let (admitted, span_ms) = (reply.u64()?, reply.u64()?);
    let epoch_ms = reply.u64()?;
    let heartbeat_ms = reply.u64()?;
    let (signs, rate) = reply.signs_and_rate(admitted, span_ms)?;
    let held = DrawHold {
        above: reply.u64()?,
        through: reply.u64()?,
    };
    let mut events = Vec::with_capacity(reply.remaining());
    while reply.remaining() > 0 {
        events.push(parse_line_entry(&reply.string()?)?);
    }
    Ok(LineChanges {
        summary: LineSummary {
            epoch_ms,
            seq,
            mode,
            waiting,
            prequeued,
            opens_at_ms,
            opened: draw != "none",
            rate,
            heartbeat_ms,
            signs,
            shards,
            held,
        },
        events,
        complete,
    })
}

/// A queue kept in one slot: its one sub-line is 0. Any other is asked of
/// a queue over sub-lines, which the caller then reads the layout of.
fn one_slot(sub_line: u32) -> Result<()> {
    match sub_line {
        0 => Ok(()),
        other => Err(Error::Internal(format!(
            "{}: sub-line {other} asked of a queue's one slot",
            breaker::SUB_LINES
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) async fn store_on(redis: &crate::testkit::RedisServer) -> RedisStore {
        RedisStore::connect(&RedisOptions {
            url: redis.url(),
            password: None,
            cluster: false,
            prefix: "t".into(),
            timeout: Duration::from_secs(2),
            sentinel_master: None,
            sentinel_password: None,
        })
        .await
        .unwrap()
    }

    /// A plain connection to `redis`, to look at or change its keys.
    pub(super) fn connection_to(redis: &crate::testkit::RedisServer) -> redis::Connection {
        redis::Client::open(redis.url())
            .and_then(|client| client.get_connection())
            .unwrap()
    }

    /// Users `user-0` … joined one after another at `now_ms`, and the
    /// ticket each was given.
    pub(super) async fn join_users(
        store: &RedisStore,
        queue: &QueueId,
        count: usize,
        now_ms: u64,
    ) -> (Vec<UserId>, HashMap<UserId, u64>) {
        let users: Vec<UserId> = (0..count)
            .map(|n| UserId::parse(&format!("user-{n}")).unwrap())
            .collect();
        let mut tickets = HashMap::new();
        for user in &users {
            let place = store.enqueue(queue, user, now_ms).await.unwrap();
            tickets.insert(user.clone(), place.ticket);
        }
        (users, tickets)
    }

    /// Rolls the head of `sale` back by hand, as a failover to a replica
    /// behind does: its sequence to 3, its leases gone, in another history.
    pub(super) fn roll_back_head(conn: &mut redis::Connection, queue: &QueueId) {
        let head = keys::queue_keys("t", queue);
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(&head[1])
            .arg(3)
            .cmd("DEL")
            .arg(keys::leases_key("t", queue))
            .cmd("HSET")
            .arg(&head[0])
            .arg("head_history")
            .arg("an-older-one")
            .query(conn)
            .unwrap();
    }

    /// A store serving sub-lines on `redis`, with the queue `sale` made
    /// over three.
    pub(super) async fn over_three_sub_lines(
        redis: &crate::testkit::RedisServer,
    ) -> (RedisStore, QueueId) {
        let store = store_on(redis).await.with_sub_lines();
        let queue = QueueId::parse("sale").unwrap();
        let mut config = QueueConfig::new(queue.clone()).created(0);
        config.shards = 3;
        store.create_queue(&config).await.unwrap();
        (store, queue)
    }

    #[tokio::test]
    async fn each_sub_line_coalesces_its_own_users_once_the_layout_is_read() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let users: Vec<UserId> = (0..30)
            .map(|i| UserId::parse(&format!("user-{i}")).unwrap())
            .collect();
        let lanes: std::collections::HashSet<usize> = users
            .iter()
            .map(|user| crate::domain::shards::sub_line_of(user.as_str(), 3) as usize)
            .collect();
        assert_eq!(lanes.len(), 3, "the users fall on every sub-line");
        // Joins within τ of each other may take tickets out of their order:
        // each is placed behind the tickets below its own.
        let mut tickets = Vec::new();
        for user in &users {
            let place = store.enqueue(&queue, user, 1_000).await.unwrap();
            tickets.push(place.ticket);
            let below = tickets.iter().filter(|&&t| t <= place.ticket).count() as u64;
            assert_eq!(
                place.state,
                crate::domain::PlaceState::Waiting { position: below }
            );
            assert_eq!(place.waiting_count, tickets.len() as u64);
        }
        assert_eq!(store.batcher.tasks(), 3, "one enqueue task per sub-line");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_waited_behind_a_slow_call_is_stamped_when_sent() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = std::sync::Arc::new(store_on(&redis).await);
        let queue = QueueId::parse("sale").unwrap();
        store
            .create_queue(&QueueConfig::new(queue.clone()).created(0))
            .await
            .unwrap();
        let join = |name: &str| {
            let (store, queue) = (std::sync::Arc::clone(&store), queue.clone());
            let user = UserId::parse(name).unwrap();
            tokio::spawn(async move { store.enqueue(&queue, &user, 10_000).await })
        };
        // The first call is sent and held by a stalled Redis; the second
        // waits behind it, both read at 10 s.
        redis.pause().unwrap();
        let first = join("first");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = join("second");
        tokio::time::sleep(Duration::from_millis(400)).await;
        redis.resume().unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        let mut conn = connection_to(&redis);
        let mut seen = |user: &str| -> u64 {
            redis::cmd("ZSCORE")
                .arg("t:{sale}:seen")
                .arg(user)
                .query(&mut conn)
                .unwrap()
        };
        assert_eq!(seen("first"), 10_000, "sent at once, as read");
        let second = seen("second");
        assert!(
            (10_350..11_000).contains(&second),
            "sent after waiting about 400 ms, at {second}"
        );
    }

    /// A sub-line failed over to a replica that lacked its last pop: the
    /// user the head settled as admitted waits there again, in a history
    /// other than the one the sub-line last checked.
    #[tokio::test]
    async fn a_sub_line_rolled_back_admits_nobody_twice() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let users: Vec<UserId> = (0..30)
            .map(|n| UserId::parse(&format!("user-{n}")).unwrap())
            .collect();
        for user in &users {
            store.enqueue(&queue, user, 1_000).await.unwrap();
        }
        let first = store
            .admit(&queue, 10, Some(&RequestId::parse("a").unwrap()), 2_000)
            .await
            .unwrap();
        assert_eq!(first.len(), 10);
        let lost = &first[3];
        let sub_line = crate::domain::shards::sub_line_of(lost.user.as_str(), 3);
        let keys = keys::tagged_keys("t", &format!("sale/3~{sub_line}"));
        let mut conn = connection_to(&redis);
        let _: () = redis::pipe()
            .cmd("HDEL")
            .arg(&keys[4])
            .arg(lost.user.as_str())
            .cmd("ZREM")
            .arg(&keys[3])
            .arg(lost.user.as_str())
            .cmd("ZADD")
            .arg(&keys[2])
            .arg(lost.admission.ticket)
            .arg(lost.user.as_str())
            .cmd("HSET")
            .arg(&keys[0])
            .arg("sub_line_history")
            .arg("an-older-one")
            .query(&mut conn)
            .unwrap();
        let rest = store
            .admit(&queue, 100, Some(&RequestId::parse("b").unwrap()), 3_000)
            .await
            .unwrap();
        let mut admitted: Vec<&UserId> = first.iter().chain(&rest).map(|a| &a.user).collect();
        assert_eq!(admitted.len(), 30, "everyone admitted once: {admitted:?}");
        admitted.sort();
        admitted.dedup();
        assert_eq!(admitted.len(), 30, "someone admitted twice");
        let place = store.place(&queue, &lost.user, 3_000).await.unwrap();
        assert!(
            matches!(
                place.map(|p| p.state),
                Some(crate::domain::PlaceState::Admitted { .. })
            ),
            "the admission the pop lost is taken again"
        );
    }

    /// A sub-line whose Redis came back empty while its head stands: its
    /// users join again (their places went with it), the others keep
    /// theirs, and admission goes on in ticket order.
    #[tokio::test]
    async fn a_sub_line_lost_by_its_redis_is_made_again_from_its_head() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let update = QueueUpdate {
            max_active: Some(500),
            ..QueueUpdate::default()
        };
        store.update_queue(&queue, &update, 500).await.unwrap();
        let (users, mut tickets) = join_users(&store, &queue, 30, 1_000).await;
        let lost_line = 1;
        let keys = keys::tagged_keys("t", &format!("sale/3~{lost_line}"));
        let mut conn = connection_to(&redis);
        let _: () = redis::cmd("UNLINK")
            .arg(&keys[..])
            .query(&mut conn)
            .unwrap();
        let of_lost = |user: &UserId| crate::domain::shards::sub_line_of(user.as_str(), 3) == 1;
        let highest = tickets.values().max().copied().unwrap_or_default();
        for user in users.iter().filter(|user| of_lost(user)) {
            let place = store.enqueue(&queue, user, 2_000).await.unwrap();
            assert!(
                place.ticket > highest,
                "{user} joined again at {}",
                place.ticket
            );
            tickets.insert(user.clone(), place.ticket);
        }
        for user in users.iter().filter(|user| !of_lost(user)) {
            let place = store.place(&queue, user, 2_000).await.unwrap().unwrap();
            assert_eq!(place.ticket, tickets[user], "{user} kept their place");
        }
        let config = store.get_queue(&queue).await.unwrap();
        assert_eq!(config.max_active, 500, "the head's settings");
        let admitted = store
            .admit(&queue, 100, Some(&RequestId::parse("all").unwrap()), 3_000)
            .await
            .unwrap();
        let order: Vec<u64> = admitted.iter().map(|a| a.admission.ticket).collect();
        let mut expected: Vec<u64> = tickets.values().copied().collect();
        expected.sort_unstable();
        assert_eq!(order, expected, "everyone admitted once, in ticket order");
        let copy: Option<String> = redis::cmd("HGET")
            .arg(&keys[0])
            .arg("max_active")
            .query(&mut conn)
            .unwrap();
        assert_eq!(
            copy.as_deref(),
            Some("500"),
            "the made-again copy's settings"
        );
        let version: Option<String> = redis::cmd("HGET")
            .arg(&keys[0])
            .arg("settings_version")
            .query(&mut conn)
            .unwrap();
        assert_eq!(version.as_deref(), Some("1"), "as of the head's version");
    }

    /// A sub-line not made yet by a creation still under way is not taken
    /// for lost: only once the head says every sub-line was made.
    #[tokio::test]
    async fn a_sub_line_is_made_again_only_once_the_creation_made_them_all() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let mut conn = connection_to(&redis);
        let head = keys::queue_keys("t", &queue);
        let keys = keys::tagged_keys("t", "sale/3~1");
        let _: () = redis::pipe()
            .cmd("HDEL")
            .arg(&head[0])
            .arg("sub_lines_made")
            .cmd("UNLINK")
            .arg(&keys[..])
            .query(&mut conn)
            .unwrap();
        let user = (0..)
            .map(|n| UserId::parse(&format!("user-{n}")).unwrap())
            .find(|user| crate::domain::shards::sub_line_of(user.as_str(), 3) == 1)
            .unwrap();
        let answer = store.enqueue(&queue, &user, 1_000).await;
        assert!(matches!(answer, Err(Error::QueueNotFound(_))), "{answer:?}");
        let _: () = redis::cmd("HSET")
            .arg(&head[0])
            .arg("sub_lines_made")
            .arg(1)
            .query(&mut conn)
            .unwrap();
        store.enqueue(&queue, &user, 1_000).await.unwrap();
    }

    /// A place given back over sub-lines whose last step never happened
    /// (the replica stopped, or the call timed out, after the head's
    /// decision): the same receipt brought again gives it.
    #[tokio::test]
    async fn a_restore_cut_short_after_the_head_s_decision_is_carried_out_again() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let someone = UserId::parse("someone").unwrap();
        let joined = store.enqueue(&queue, &someone, 1_000).await.unwrap();
        let returning = UserId::parse("returning").unwrap();
        let claim = PlaceClaim {
            epoch_ms: store.get_queue(&queue).await.unwrap().created_at_ms,
            ticket: joined.ticket + 40,
            head: 0,
            top: 0,
            issued_ms: 1_000,
        };
        let restored = store
            .restore(&queue, &returning, &claim, 1_000)
            .await
            .unwrap();
        assert!(matches!(restored, Restoration::Restored(_)), "{restored:?}");
        // Undo the placing, as if it never ran after the head's decision.
        let sub_line = crate::domain::shards::sub_line_of(returning.as_str(), 3);
        let keys = keys::tagged_keys("t", &format!("sale/3~{sub_line}"));
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg(keys::given_to_key("t", &queue))
            .arg(claim.ticket)
            .arg(returning.as_str())
            .cmd("ZREM")
            .arg(&keys[2])
            .arg(returning.as_str())
            .cmd("ZREM")
            .arg(&keys[11])
            .arg(returning.as_str())
            .query(&mut connection_to(&redis))
            .unwrap();
        let again = store
            .restore(&queue, &returning, &claim, 1_000)
            .await
            .unwrap();
        let Restoration::Restored(place) = again else {
            panic!("{again:?}");
        };
        assert_eq!(place.ticket, claim.ticket);
        // Someone else with that ticket is still refused.
        let other = UserId::parse("other").unwrap();
        let _: () = redis::cmd("ZREM")
            .arg(&keys[2])
            .arg(returning.as_str())
            .query(&mut connection_to(&redis))
            .unwrap();
        let refused = store.restore(&queue, &other, &claim, 1_000).await.unwrap();
        assert!(matches!(refused, Restoration::Refused(_)), "{refused:?}");
        // Once placed, what becomes of the place stands: gone, the same
        // receipt does not bring it back.
        let again = store
            .restore(&queue, &returning, &claim, 1_000)
            .await
            .unwrap();
        assert!(matches!(again, Restoration::Refused(_)), "{again:?}");
    }

    /// The users of a sub-line its Redis lost come back with their
    /// receipts: each gets their place back once, and those admitted
    /// before the loss do not.
    #[tokio::test]
    async fn a_lost_sub_line_gives_its_users_places_back_from_their_receipts() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let (users, tickets) = join_users(&store, &queue, 30, 1_000).await;
        let first = store
            .admit(&queue, 6, Some(&RequestId::parse("a").unwrap()), 2_000)
            .await
            .unwrap();
        let epoch = store.get_queue(&queue).await.unwrap().created_at_ms;
        let of_lost = |user: &UserId| crate::domain::shards::sub_line_of(user.as_str(), 3) == 1;
        let keys = keys::tagged_keys("t", "sale/3~1");
        let mut conn = connection_to(&redis);
        let _: () = redis::cmd("UNLINK")
            .arg(&keys[..])
            .query(&mut conn)
            .unwrap();
        // A newcomer of that sub-line makes it again.
        let newcomer = (0..)
            .map(|n| UserId::parse(&format!("new-{n}")).unwrap())
            .find(|user| of_lost(user))
            .unwrap();
        let joined = store.enqueue(&queue, &newcomer, 3_000).await.unwrap();
        let claim = |user: &UserId| PlaceClaim {
            epoch_ms: epoch,
            ticket: tickets[user],
            head: 0,
            top: 0,
            issued_ms: 1_500,
        };
        let admitted: Vec<&UserId> = first.iter().map(|a| &a.user).collect();
        let mut back = 0;
        for user in users.iter().filter(|user| of_lost(user)) {
            let restored = store
                .restore(&queue, user, &claim(user), 4_000)
                .await
                .unwrap();
            if admitted.contains(&user) {
                assert_eq!(
                    restored,
                    Restoration::Refused(crate::domain::Refusal::NotGiven),
                    "{user}"
                );
                continue;
            }
            let Restoration::Restored(place) = restored else {
                panic!("{user}: {restored:?}");
            };
            assert_eq!(place.ticket, tickets[user]);
            back += 1;
            // Once: a second receipt finds the place held.
            let again = store
                .restore(&queue, user, &claim(user), 4_000)
                .await
                .unwrap();
            assert_eq!(again, Restoration::Holds);
        }
        assert!(back > 3, "only {back} places given back");
        // In ticket order with everyone else, the newcomer last.
        let rest = store
            .admit(&queue, 100, Some(&RequestId::parse("b").unwrap()), 5_000)
            .await
            .unwrap();
        let order: Vec<u64> = rest.iter().map(|a| a.admission.ticket).collect();
        let mut expected: Vec<u64> = users
            .iter()
            .filter(|user| !admitted.contains(user))
            .map(|user| tickets[user])
            .collect();
        expected.sort_unstable();
        expected.push(joined.ticket);
        assert_eq!(order, expected);
    }

    /// A join whose sub-line's block closed since its last call gave a
    /// ticket leases one from the head ahead and joins with it: two script
    /// calls (the lease, the join) and the read of positions over the head
    /// and the three sub-lines.
    #[tokio::test]
    async fn a_join_leases_its_block_ahead_and_brings_it_to_its_call() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        // The first joins read the layout and resync the new head and each
        // new sub-line.
        let mut warmed = std::collections::HashSet::new();
        for n in 0.. {
            let user = UserId::parse(&format!("first-{n}")).unwrap();
            if warmed.insert(crate::domain::shards::sub_line_of(user.as_str(), 3)) {
                store.enqueue(&queue, &user, 1_000).await.unwrap();
            }
            if warmed.len() == 3 {
                break;
            }
        }
        for n in 0..20u64 {
            let user = UserId::parse(&format!("user-{n}")).unwrap();
            let before = redis.calls("evalsha").unwrap();
            // τ after every block's lease: each join leases one.
            let place = store.enqueue(&queue, &user, 2_000 + 10 * n).await.unwrap();
            assert_eq!(place.waiting_count, n + 4);
            assert_eq!(redis.calls("evalsha").unwrap() - before, 2 + 4, "join {n}");
        }
    }

    /// A head failed over to a replica that lacked its last leases (or
    /// restarted from an older copy): its sequence and leases rolled back,
    /// in a history other than the one it last leased in.
    #[tokio::test]
    async fn a_head_rolled_back_gives_no_ticket_twice_and_admits_everyone_once() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let (store, queue) = over_three_sub_lines(&redis).await;
        let join = |from: usize, now_ms: u64| {
            let (store, queue) = (&store, &queue);
            async move {
                let mut tickets = Vec::new();
                for n in from..from + 60 {
                    let user = UserId::parse(&format!("user-{n}")).unwrap();
                    tickets.push(store.enqueue(queue, &user, now_ms).await.unwrap().ticket);
                }
                tickets
            }
        };
        let mut before = join(0, 1_000).await;
        // A place given back from a receipt stands above every block.
        let returning = UserId::parse("returning").unwrap();
        let above = before.iter().max().copied().unwrap_or_default() + 50;
        let epoch = store.get_queue(&queue).await.unwrap().created_at_ms;
        let claim = PlaceClaim {
            epoch_ms: epoch,
            ticket: above,
            head: 0,
            top: 0,
            issued_ms: 1_000,
        };
        let restored = store
            .restore(&queue, &returning, &claim, 1_000)
            .await
            .unwrap();
        assert!(matches!(restored, Restoration::Restored(_)), "{restored:?}");
        before.push(above);
        let mut conn = connection_to(&redis);
        roll_back_head(&mut conn, &queue);
        // Admission first: its watermark reads the sequence.
        let request = RequestId::parse("first").unwrap();
        let first = store
            .admit(&queue, 10, Some(&request), 2_000)
            .await
            .unwrap();
        let mut lowest = before.clone();
        lowest.sort_unstable();
        assert_eq!(
            first.iter().map(|a| a.admission.ticket).collect::<Vec<_>>(),
            lowest[..10]
        );
        let after = join(60, 2_000).await;
        let highest = before.iter().max().copied().unwrap_or_default();
        assert!(
            after.iter().all(|&ticket| ticket > highest),
            "tickets after the rollback {after:?} not above {highest}"
        );
        let request = RequestId::parse("rest").unwrap();
        let rest = store
            .admit(&queue, 500, Some(&request), 3_000)
            .await
            .unwrap();
        let admitted: Vec<u64> = first
            .iter()
            .chain(&rest)
            .map(|a| a.admission.ticket)
            .collect();
        let mut everyone: Vec<u64> = before.iter().chain(&after).copied().collect();
        everyone.sort_unstable();
        assert_eq!(
            admitted, everyone,
            "everyone admitted once, in ticket order"
        );
    }

    #[tokio::test]
    async fn lookups_of_queues_that_do_not_exist_leave_no_batching_task_behind() {
        let redis = crate::testkit::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let store = store_on(&redis).await;
        let user = UserId::parse("someone").unwrap();
        for i in 0..2_000 {
            let queue = QueueId::parse(&format!("made-up-{i}")).unwrap();
            let answer = store.place(&queue, &user, 0).await;
            assert!(matches!(answer, Err(Error::QueueNotFound(_))), "{answer:?}");
        }
        for _ in 0..100 {
            if store.batcher.tasks() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{} batching tasks left for queues that do not exist",
            store.batcher.tasks()
        );
    }
}
