//! The one place where a store built over another passes calls on.
//!
//! [`crate::watch::WatchedStore`] and the tests' held stores change a few
//! calls of the store beneath them; [`queue_store_over!`] writes the
//! `QueueStore` impl with the calls they list passed to their inner store
//! unchanged and the ones they write themselves as written. The trait has
//! no default methods, so a call added to it must be added to the table
//! below and then to each wrapper's list or its own methods: none is passed
//! on by omission.

/// `queue_store_over!(Type, field, [calls passed to self.field], { own async fns })`
/// writes `#[async_trait] impl QueueStore for Type`.
macro_rules! queue_store_over {
    ($ty:ty, $inner:ident, [$($call:ident),* $(,)?], { $($own:tt)* }) => {
        $crate::store::queue_store_over!(@next $ty, $inner, [$($call),*], [], { $($own)* });
    };
    (@next $ty:ty, $inner:ident, [], [$($done:tt)*], { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::store::QueueStore for $ty {
            $($done)*
            $($own)*
        }
    };
    (@next $ty:ty, $inner:ident, [$call:ident $(, $rest:ident)*], $done:tt, $own:tt) => {
        $crate::store::queue_store_over!(@signature $call, $ty, $inner, [$($rest),*], $done, $own);
    };
    (@pass $call:ident ($($arg:ident: $arg_ty:ty),*) -> $out:ty;
        $ty:ty, $inner:ident, $rest:tt, [$($done:tt)*], $own:tt) => {
        $crate::store::queue_store_over!(@next $ty, $inner, $rest, [
            $($done)*
            async fn $call(&self, $($arg: $arg_ty),*) -> $out {
                $crate::store::QueueStore::$call(&*self.$inner, $($arg),*).await
            }
        ], $own);
    };
    // The trait's calls, as declared in `store/mod.rs`.
    (@signature create_queue, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        create_queue(config: &$crate::domain::QueueConfig) -> $crate::Result<$crate::domain::QueueConfig>; $($pass)*); };
    (@signature queue_lost, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        queue_lost(queue: &$crate::domain::QueueId) -> $crate::Result<bool>; $($pass)*); };
    (@signature remake_from_parts, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        remake_from_parts(queue: &$crate::domain::QueueId, epoch_ms: u64, now_ms: u64)
            -> $crate::Result<Option<$crate::domain::QueueConfig>>; $($pass)*); };
    (@signature get_queue, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        get_queue(queue: &$crate::domain::QueueId) -> $crate::Result<$crate::domain::QueueConfig>; $($pass)*); };
    (@signature list_queues, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        list_queues(after: Option<&$crate::domain::QueueId>, limit: usize)
            -> $crate::Result<Vec<$crate::domain::QueueConfig>>; $($pass)*); };
    (@signature update_queue, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        update_queue(queue: &$crate::domain::QueueId, update: &$crate::domain::QueueUpdate, now_ms: u64)
            -> $crate::Result<$crate::domain::QueueConfig>; $($pass)*); };
    (@signature delete_queue, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        delete_queue(queue: &$crate::domain::QueueId) -> $crate::Result<()>; $($pass)*); };
    (@signature enqueue, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        enqueue(queue: &$crate::domain::QueueId, user: &$crate::domain::UserId, now_ms: u64)
            -> $crate::Result<$crate::domain::Place>; $($pass)*); };
    (@signature enqueue_many, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        enqueue_many(queue: &$crate::domain::QueueId, users: &[$crate::domain::UserId], now_ms: u64)
            -> $crate::Result<Vec<$crate::Result<$crate::domain::Place>>>; $($pass)*); };
    (@signature places, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        places(queue: &$crate::domain::QueueId, users: &[$crate::domain::UserId], touch: bool, now_ms: u64)
            -> $crate::Result<Vec<Option<$crate::domain::Place>>>; $($pass)*); };
    (@signature place, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        place(queue: &$crate::domain::QueueId, user: &$crate::domain::UserId, now_ms: u64)
            -> $crate::Result<Option<$crate::domain::Place>>; $($pass)*); };
    (@signature restore, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        restore(queue: &$crate::domain::QueueId, user: &$crate::domain::UserId,
            claim: &$crate::domain::PlaceClaim, now_ms: u64)
            -> $crate::Result<$crate::domain::Restoration>; $($pass)*); };
    (@signature touch, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        touch(queue: &$crate::domain::QueueId, users: &[$crate::domain::UserId], now_ms: u64)
            -> $crate::Result<()>; $($pass)*); };
    (@signature reap, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        reap(queue: &$crate::domain::QueueId, limit: u32, now_ms: u64) -> $crate::Result<u64>; $($pass)*); };
    (@signature line_snapshot, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        line_snapshot(queue: &$crate::domain::QueueId, sub_line: u32, after: u64, limit: u32)
            -> $crate::Result<$crate::domain::LineSnapshot>; $($pass)*); };
    (@signature line_changes, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        line_changes(queue: &$crate::domain::QueueId, sub_line: u32, after: u64, limit: u32,
            now_ms: u64)
            -> $crate::Result<$crate::domain::LineChanges>; $($pass)*); };
    (@signature draw_step, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        draw_step(queue: &$crate::domain::QueueId, seed: &str, chunk: u32, now_ms: u64)
            -> $crate::Result<bool>; $($pass)*); };
    (@signature leave, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        leave(queue: &$crate::domain::QueueId, user: &$crate::domain::UserId, now_ms: u64)
            -> $crate::Result<bool>; $($pass)*); };
    (@signature admit, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        admit(queue: &$crate::domain::QueueId, max_count: u32,
            request: Option<&$crate::domain::RequestId>, now_ms: u64)
            -> $crate::Result<Vec<$crate::domain::Admitted>>; $($pass)*); };
    (@signature admit_due, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        admit_due(queue: &$crate::domain::QueueId, max_count: u32, now_ms: u64)
            -> $crate::Result<Vec<$crate::domain::Admitted>>; $($pass)*); };
    (@signature admit_users, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        admit_users(queue: &$crate::domain::QueueId, users: &[$crate::domain::UserId],
            request: &$crate::domain::RequestId, override_capacity: bool, now_ms: u64)
            -> $crate::Result<Vec<$crate::domain::NamedAdmission>>; $($pass)*); };
    (@signature clear_step, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        clear_step(queue: &$crate::domain::QueueId, limit: u32, now_ms: u64) -> $crate::Result<u64>; $($pass)*); };
    (@signature complete, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        complete(queue: &$crate::domain::QueueId, user: &$crate::domain::UserId, now_ms: u64)
            -> $crate::Result<bool>; $($pass)*); };
    (@signature check_admission, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        check_admission(queue: &$crate::domain::QueueId, check: &$crate::domain::AdmissionCheck, now_ms: u64)
            -> $crate::Result<$crate::domain::AdmissionStatus>; $($pass)*); };
    (@signature stats, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        stats(queue: &$crate::domain::QueueId, now_ms: u64) -> $crate::Result<$crate::domain::QueueStats>; $($pass)*); };
    (@signature ping, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        ping() -> $crate::Result<()>; $($pass)*); };
    (@signature setup_problem, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        setup_problem() -> $crate::Result<Option<String>>; $($pass)*); };
    (@signature share_load, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        share_load(instance: &str, streams: Option<u64>, ttl_ms: u64, now_ms: u64)
            -> $crate::Result<Vec<u64>>; $($pass)*); };
    (@signature announce, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        announce(queue: &$crate::domain::QueueId) -> (); $($pass)*); };
    (@signature hear_announcements, $($pass:tt)*) => { $crate::store::queue_store_over!(@pass
        hear_announcements(heard: $crate::store::Announced, stop: tokio_util::sync::CancellationToken)
            -> (); $($pass)*); };
}

pub(crate) use queue_store_over;
