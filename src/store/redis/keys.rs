//! Redis key names. Every key of a queue carries the queue id as a hash tag
//! (`{sale}`), so a queue lives in one Cluster slot and its scripts stay
//! legal under Redis Cluster; different queues spread over the shards.

use crate::domain::QueueId;

/// How many keys every queue script receives; a script's own follow.
pub(super) const QUEUE_KEYS: usize = 16;

/// The keys every queue script receives, in this order (`KEYS[1..16]`).
///
/// | key | type | holds |
/// | --- | --- | --- |
/// | `P:{q}:config` | hash | the configuration and the queue's own state (below) |
/// | `P:{q}:seq` | string | the last ticket given (`INCR`) |
/// | `P:{q}:waiting` | sorted set | waiting user → ticket; the score is a sequence number, so ties cannot reorder anyone |
/// | `P:{q}:active` | sorted set | admitted user → expiry (ms); its size is what `max_active` caps |
/// | `P:{q}:admitted` | hash | admitted user → `ticket:admitted_at_ms:expires_at_ms` |
/// | `P:{q}:stats` | hash | counters: enqueued, admitted, completed, expired, left, abandoned; the rate's token bucket: bucket_milli, bucket_ms |
/// | `P:{q}:rate` | hash | second (`now_ms / 1000`) → admissions in it, the last minute only |
/// | `P:{q}:batches` | hash | `AdmitBatch` request id → its result, kept for retries |
/// | `P:{q}:batch_expiry` | sorted set | request id → when its kept result lapses (ms) |
/// | `P:{q}:prequeue` | sorted set | user pre-queued for a scheduled opening → arrival number |
/// | `P:{q}:pool` | sorted set | user being placed by the opening draw → draw key |
/// | `P:{q}:seen` | sorted set | user in line → last sign of life (ms) |
/// | `P:{q}:log` | sorted set | the last changes to the waiting set, scored by sequence number (`config.log_seq`): `seq\|kind\|ticket\|detail` (see `line_changes.lua`) |
/// | `P:{q}:cleared` | set | users taken out of line by clearing the queue, told so while it stays closed |
/// | `P:{q}:flow` | hash | the sale's recent figures in time buckets: `j:<second>` arrivals, `x:<second>` abandonments, `w:<slot>:<bucket>` admissions by time waited (see `domain/estimate.rs`) |
/// | `P:{q}:joined` | sorted set | second → the highest ticket given by then, for the time each admitted user waited; trimmed as the line is admitted |
///
/// A queue over several sub-lines keeps these keys once per sub-line, under
/// the sub-line's tag ([`tagged_keys`]), whose config is a copy of the
/// head's with `sub_line` and the sub-line's block (`block_first`,
/// `block_next`, `block_end`, `block_ms`). Its head, under the queue's own
/// tag, keeps the config (with `shards` and `sub_lines`, the tags), the
/// ticket sequence and the recent leases ([`leases_key`]).
///
/// The config hash holds mode, max_active, admit_per_second,
/// admission_ttl_ms, heartbeat_timeout_ms, created_at_ms (the queue's
/// epoch), opens_at_ms, prequeue_window_ms, presence_since_ms, log_seq (the
/// line log's last sequence number), notice, closed_reason, flow_pruned_s
/// (when old buckets of the flow hash were last dropped), and the draw's
/// state: draw (none, frozen, hashing, assigning, done), draw_seed,
/// draw_next, prequeue_seq.
///
/// Two more keys share the tag and outlive the queue (see
/// [`used_tokens_keys`]): `P:{q}:used`, a sorted set of consumed token ids
/// scored by how long each is remembered, and `P:{q}:used_by`, a hash of
/// the request that consumed each.
pub(super) fn queue_keys(prefix: &str, queue: &QueueId) -> [String; QUEUE_KEYS] {
    tagged_keys(prefix, queue.as_str())
}

/// The same keys under another hash tag: a sub-line of a queue over
/// several (`{sale/4~2}`), whose config is a copy of the head's with the
/// sub-line's own block of tickets (see `sub_lines.rs`).
pub(super) fn tagged_keys(prefix: &str, tag: &str) -> [String; QUEUE_KEYS] {
    [
        "config",
        "seq",
        "waiting",
        "active",
        "admitted",
        "stats",
        "rate",
        "batches",
        "batch_expiry",
        "prequeue",
        "pool",
        "seen",
        "log",
        "cleared",
        "flow",
        "joined",
    ]
    .map(|name| format!("{prefix}:{{{tag}}}:{name}"))
}

/// The hash tag of a key made here (what lies between its first `{` and
/// the `}` after it).
pub(super) fn tag_of(key: &str) -> Option<&str> {
    let (_, rest) = key.split_once('{')?;
    let (tag, _) = rest.split_once('}')?;
    Some(tag)
}

/// The head's recent leases of a queue over several sub-lines (`lease.lua`).
pub(super) fn leases_key(prefix: &str, queue: &QueueId) -> String {
    format!("{prefix}:{{{queue}}}:leases")
}

/// The admissions a queue over sub-lines settled lately, at its head
/// (`admission_head.lua`), for a sub-line that lost its last pops
/// (`sub_line_resync.lua`).
pub(super) fn recently_admitted_key(prefix: &str, queue: &QueueId) -> String {
    format!("{prefix}:{{{queue}}}:recently_admitted")
}

/// The mark a deleted queue leaves (the epoch it had), until it is
/// created again: a queue missing without it was lost by the store.
pub(super) fn deleted_key(prefix: &str, queue: &QueueId) -> String {
    format!("{prefix}:{{{queue}}}:deleted")
}

/// Set of the tickets of a lost line that a re-made queue gave back from
/// receipts, each once: read by `restore` alone, so not among the keys
/// every queue script receives.
pub(super) fn given_back_key(prefix: &str, queue: &QueueId) -> String {
    format!("{prefix}:{{{queue}}}:given_back")
}

/// The same under another hash tag: a sub-line's, for the places it gives
/// back after its Redis lost it (`restore_sub_line.lua`).
pub(super) fn tagged_given_back_key(prefix: &str, tag: &str) -> String {
    format!("{prefix}:{{{tag}}}:given_back")
}

/// Whom a queue over sub-lines gave each ticket back to from a receipt
/// (`head_restore.lua`).
pub(super) fn given_to_key(prefix: &str, queue: &QueueId) -> String {
    format!("{prefix}:{{{queue}}}:given_to")
}

/// Set of all queue ids. It spans queues, so no script touches it: it is
/// written before a queue's config is created and after it is deleted, and
/// readers skip ids whose config is gone.
pub(super) fn index_key(prefix: &str) -> String {
    format!("{prefix}:queues")
}

/// Hash of the service instances' open streams (see
/// [`crate::store::QueueStore::share_load`]); spans queues, like the index.
pub(super) fn instances_key(prefix: &str) -> String {
    format!("{prefix}:instances")
}

/// Sorted set of consumed token ids scored by how long each is remembered
/// (ms), and the hash of the request that consumed each. Not among the
/// queue's keys: deleting a queue leaves its tokens consumed.
pub(super) fn used_tokens_keys(prefix: &str, queue: &QueueId) -> [String; 2] {
    tagged_used_tokens_keys(prefix, queue.as_str())
}

/// The same under another hash tag: a sub-line's, whose admissions it
/// keeps.
pub(super) fn tagged_used_tokens_keys(prefix: &str, tag: &str) -> [String; 2] {
    [
        format!("{prefix}:{{{tag}}}:used"),
        format!("{prefix}:{{{tag}}}:used_by"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_queue_shares_its_hash_tag() {
        let queue = QueueId::parse("sale-1").unwrap();
        let mut keys = queue_keys("wr", &queue).to_vec();
        keys.extend(used_tokens_keys("wr", &queue));
        keys.push(deleted_key("wr", &queue));
        keys.push(given_back_key("wr", &queue));
        for key in keys {
            assert!(key.starts_with("wr:{sale-1}:"), "{key}");
        }
    }
}
