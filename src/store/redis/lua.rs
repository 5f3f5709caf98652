//! The scripts: one per state transition (`scripts/*.lua`, each headed by
//! its KEYS, ARGV and return value), each run with the shared prelude, and
//! the constants both sides must agree on, given to the scripts from their
//! one definition in Rust.

use redis::Script;

use crate::domain::shards::{MAX_BLOCK, SKEW_MS, TAU_MS};
use crate::domain::{
    DEAF_AFTER_MS, FLOW_SLOT_MS, LINE_LOG_KEEP, RATE_WINDOW_MS, RECENT_MS, WAITED_BOUNDS_S,
    WAITED_SLOT_MS, WAITED_WINDOW_MS,
};

pub(super) struct Scripts {
    pub(super) create_queue: Script,
    pub(super) update_queue: Script,
    pub(super) delete_queue: Script,
    pub(super) enqueue_many: Script,
    pub(super) places: Script,
    pub(super) leave: Script,
    pub(super) admit: Script,
    pub(super) admit_due: Script,
    pub(super) admit_users: Script,
    pub(super) clear_step: Script,
    pub(super) complete: Script,
    pub(super) stats: Script,
    pub(super) check_admission: Script,
    pub(super) touch: Script,
    pub(super) reap: Script,
    pub(super) draw_step: Script,
    pub(super) line_changes: Script,
    pub(super) line_snapshot: Script,
    pub(super) share_load: Script,
    pub(super) restore: Script,
    pub(super) restore_sub_line: Script,
    pub(super) head_restore: Script,
    pub(super) sub_line_resync: Script,
    pub(super) lease: Script,
    pub(super) install_block: Script,
    pub(super) count_below: Script,
    pub(super) admission_head: Script,
    pub(super) admission_front: Script,
    pub(super) admission_pop: Script,
    pub(super) head_sample: Script,
    pub(super) used_token: Script,
    pub(super) head_update: Script,
    pub(super) copy_settings: Script,
    pub(super) admit_named: Script,
    pub(super) draw_sub_line: Script,
    pub(super) draw_head: Script,
}

/// Shared by the enqueue scripts (and the benchmark's own).
pub const ENQUEUE_ONE: &str = include_str!("scripts/enqueue_one.lua");

/// A script's source: the constants, the prelude, then `body`.
pub(crate) fn with_prelude_source(body: &str) -> String {
    let bounds: Vec<String> = WAITED_BOUNDS_S.iter().map(u64::to_string).collect();
    format!(
        "local LOG_KEEP = {LINE_LOG_KEEP}\nlocal RATE_WINDOW_MS = {RATE_WINDOW_MS}\n\
         local RECENT_MS = {RECENT_MS}\nlocal WAITED_WINDOW_MS = {WAITED_WINDOW_MS}\n\
         local WAITED_SLOT_MS = {WAITED_SLOT_MS}\nlocal WAITED_BOUNDS_S = {{ {} }}\n\
         local FLOW_SLOT_MS = {FLOW_SLOT_MS}\nlocal DEAF_AFTER_MS = {DEAF_AFTER_MS}\n\
         local TAU_MS = {TAU_MS}\nlocal SKEW_MS = {SKEW_MS}\nlocal MAX_BLOCK = {MAX_BLOCK}\n{}\n{body}",
        bounds.join(", "),
        include_str!("scripts/prelude.lua")
    )
}

pub(super) fn enqueue_many_source() -> String {
    with_prelude_source(&format!(
        "{}\n{}",
        ENQUEUE_ONE,
        include_str!("scripts/enqueue_many.lua")
    ))
}

impl Scripts {
    pub(super) fn load() -> Self {
        let with_prelude = |body: &str| Script::new(&with_prelude_source(body));
        Self {
            create_queue: with_prelude(include_str!("scripts/create_queue.lua")),
            update_queue: with_prelude(include_str!("scripts/update_queue.lua")),
            delete_queue: with_prelude(include_str!("scripts/delete_queue.lua")),
            enqueue_many: Script::new(&enqueue_many_source()),
            places: with_prelude(include_str!("scripts/places.lua")),
            leave: with_prelude(include_str!("scripts/leave.lua")),
            admit: with_prelude(include_str!("scripts/admit.lua")),
            admit_due: with_prelude(include_str!("scripts/admit_due.lua")),
            admit_users: with_prelude(include_str!("scripts/admit_users.lua")),
            clear_step: with_prelude(include_str!("scripts/clear_step.lua")),
            complete: with_prelude(include_str!("scripts/complete.lua")),
            stats: with_prelude(include_str!("scripts/stats.lua")),
            check_admission: with_prelude(include_str!("scripts/check_admission.lua")),
            touch: with_prelude(include_str!("scripts/touch.lua")),
            reap: with_prelude(include_str!("scripts/reap.lua")),
            draw_step: with_prelude(include_str!("scripts/draw_step.lua")),
            line_changes: with_prelude(include_str!("scripts/line_changes.lua")),
            line_snapshot: with_prelude(include_str!("scripts/line_snapshot.lua")),
            share_load: Script::new(include_str!("scripts/share_load.lua")),
            restore: with_prelude(include_str!("scripts/restore.lua")),
            restore_sub_line: with_prelude(include_str!("scripts/restore_sub_line.lua")),
            head_restore: with_prelude(include_str!("scripts/head_restore.lua")),
            sub_line_resync: with_prelude(include_str!("scripts/sub_line_resync.lua")),
            lease: with_prelude(include_str!("scripts/lease.lua")),
            install_block: with_prelude(include_str!("scripts/install_block.lua")),
            count_below: with_prelude(include_str!("scripts/count_below.lua")),
            admission_head: with_prelude(include_str!("scripts/admission_head.lua")),
            draw_sub_line: with_prelude(include_str!("scripts/draw_sub_line.lua")),
            draw_head: with_prelude(include_str!("scripts/draw_head.lua")),
            admission_front: with_prelude(include_str!("scripts/admission_front.lua")),
            admission_pop: with_prelude(include_str!("scripts/admission_pop.lua")),
            head_sample: with_prelude(include_str!("scripts/head_sample.lua")),
            used_token: Script::new(include_str!("scripts/used_token.lua")),
            head_update: with_prelude(include_str!("scripts/head_update.lua")),
            copy_settings: with_prelude(include_str!("scripts/copy_settings.lua")),
            admit_named: with_prelude(include_str!("scripts/admit_named.lua")),
        }
    }
}
