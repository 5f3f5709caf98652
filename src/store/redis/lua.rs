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

/// Shared by the enqueue scripts (and the benchmark's own).
pub const ENQUEUE_ONE: &str = include_str!("scripts/enqueue_one.lua");

/// A script's source: the constants, the prelude's functions that `body`
/// calls (see [`prelude_for`]), then `body`.
pub(crate) fn with_prelude_source(body: &str) -> String {
    let bounds: Vec<String> = WAITED_BOUNDS_S.iter().map(u64::to_string).collect();
    format!(
        "local LOG_KEEP = {LINE_LOG_KEEP}\nlocal RATE_WINDOW_MS = {RATE_WINDOW_MS}\n\
         local RECENT_MS = {RECENT_MS}\nlocal WAITED_WINDOW_MS = {WAITED_WINDOW_MS}\n\
         local WAITED_SLOT_MS = {WAITED_SLOT_MS}\nlocal WAITED_BOUNDS_S = {{ {} }}\n\
         local FLOW_SLOT_MS = {FLOW_SLOT_MS}\nlocal DEAF_AFTER_MS = {DEAF_AFTER_MS}\n\
         local TAU_MS = {TAU_MS}\nlocal SKEW_MS = {SKEW_MS}\nlocal MAX_BLOCK = {MAX_BLOCK}\n{}\n{body}",
        bounds.join(", "),
        prelude_for(body)
    )
}

/// The prelude with only the functions `body` calls, directly or through
/// other prelude functions. Every call of a script runs the prelude's
/// top level, which makes a closure of each of its fifty-odd functions:
/// about 10 µs a call in all, as much as a small script's own work (the
/// sub-lines' counts, a lease, the head's sample). The prelude's other
/// statements (its keys, clock and shared locals) are kept whole.
fn prelude_for(body: &str) -> String {
    let prelude = include_str!("scripts/prelude.lua");
    // (name, text) of each top-level function, in order; None for the
    // text between them.
    let mut parts: Vec<(Option<&str>, String)> = Vec::new();
    let mut lines = prelude.lines();
    let mut between = String::new();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("local function ")
            .and_then(|rest| rest.split('(').next())
        else {
            between.push_str(line);
            between.push('\n');
            continue;
        };
        parts.push((None, std::mem::take(&mut between)));
        let mut text = format!("{line}\n");
        for line in lines.by_ref() {
            text.push_str(line);
            text.push('\n');
            if line == "end" {
                break;
            }
        }
        parts.push((Some(name), text));
    }
    parts.push((None, between));
    let mut wanted: Vec<bool> = parts.iter().map(|(name, _)| name.is_none()).collect();
    let statements: String = parts
        .iter()
        .filter(|(name, _)| name.is_none())
        .map(|(_, text)| text.as_str())
        .collect();
    let mut unread: Vec<String> = vec![code(body), code(&statements)];
    while let Some(text) = unread.pop() {
        for (at, (name, part)) in parts.iter().enumerate() {
            if let Some(name) = name
                && !wanted[at]
                && mentions(&text, name)
            {
                wanted[at] = true;
                unread.push(code(part));
            }
        }
    }
    parts
        .iter()
        .zip(wanted)
        .filter(|(_, wanted)| *wanted)
        .map(|((_, text), _)| text.as_str())
        .collect()
}

/// `text` without its comments, which name functions only to explain
/// (the scripts' comments are whole lines).
fn code(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `text` names `name` as a whole word.
fn mentions(text: &str, name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        !text[..at].chars().next_back().is_some_and(word)
            && !text[at + name.len()..].chars().next().is_some_and(word)
    })
}

pub(super) fn enqueue_many_source() -> String {
    with_prelude_source(&format!(
        "{}\n{}",
        ENQUEUE_ONE,
        include_str!("scripts/enqueue_many.lua")
    ))
}

/// Defines the scripts once: the store's table of them, and each one's name
/// by its SHA1 for reading Redis's own logs of the calls (the benchmark's
/// profile).
macro_rules! scripts {
    ($($name:ident: $source:expr,)*) => {
        pub(super) struct Scripts {
            $(pub(super) $name: Script,)*
        }

        impl Scripts {
            pub(super) fn load() -> Self {
                Self {
                    $($name: Script::new(&$source),)*
                }
            }
        }

        #[cfg(test)]
        fn script_names_and_sources() -> Vec<(&'static str, String)> {
            vec![$((stringify!($name), String::from($source)),)*]
        }

        /// Every script's name, by the SHA1 Redis knows it by.
        #[cfg(feature = "testkit")]
        pub fn script_names() -> Vec<(String, &'static str)> {
            vec![$((Script::new(&$source).get_hash().to_string(), stringify!($name)),)*]
        }
    };
}

scripts! {
    create_queue: with_prelude_source(include_str!("scripts/create_queue.lua")),
    update_queue: with_prelude_source(include_str!("scripts/update_queue.lua")),
    delete_queue: with_prelude_source(include_str!("scripts/delete_queue.lua")),
    enqueue_many: enqueue_many_source(),
    places: with_prelude_source(include_str!("scripts/places.lua")),
    leave: with_prelude_source(include_str!("scripts/leave.lua")),
    admit: with_prelude_source(include_str!("scripts/admit.lua")),
    admit_due: with_prelude_source(include_str!("scripts/admit_due.lua")),
    admit_users: with_prelude_source(include_str!("scripts/admit_users.lua")),
    clear_step: with_prelude_source(include_str!("scripts/clear_step.lua")),
    complete: with_prelude_source(include_str!("scripts/complete.lua")),
    stats: with_prelude_source(include_str!("scripts/stats.lua")),
    check_admission: with_prelude_source(include_str!("scripts/check_admission.lua")),
    touch: with_prelude_source(include_str!("scripts/touch.lua")),
    reap: with_prelude_source(include_str!("scripts/reap.lua")),
    draw_step: with_prelude_source(include_str!("scripts/draw_step.lua")),
    line_changes: with_prelude_source(include_str!("scripts/line_changes.lua")),
    line_snapshot: with_prelude_source(include_str!("scripts/line_snapshot.lua")),
    share_load: include_str!("scripts/share_load.lua"),
    restore: with_prelude_source(include_str!("scripts/restore.lua")),
    restore_sub_line: with_prelude_source(include_str!("scripts/restore_sub_line.lua")),
    head_restore: with_prelude_source(include_str!("scripts/head_restore.lua")),
    sub_line_resync: with_prelude_source(include_str!("scripts/sub_line_resync.lua")),
    lease: with_prelude_source(include_str!("scripts/lease.lua")),
    give_back: with_prelude_source(include_str!("scripts/give_back.lua")),
    read_seq: with_prelude_source(include_str!("scripts/read_seq.lua")),
    install_block: with_prelude_source(include_str!("scripts/install_block.lua")),
    count_below: with_prelude_source(include_str!("scripts/count_below.lua")),
    admission_head: with_prelude_source(include_str!("scripts/admission_head.lua")),
    draw_sub_line: with_prelude_source(include_str!("scripts/draw_sub_line.lua")),
    draw_head: with_prelude_source(include_str!("scripts/draw_head.lua")),
    admission_front: with_prelude_source(include_str!("scripts/admission_front.lua")),
    admission_pop: with_prelude_source(include_str!("scripts/admission_pop.lua")),
    head_sample: with_prelude_source(include_str!("scripts/head_sample.lua")),
    used_token: include_str!("scripts/used_token.lua"),
    head_update: with_prelude_source(include_str!("scripts/head_update.lua")),
    copy_settings: with_prelude_source(include_str!("scripts/copy_settings.lua")),
    admit_named: with_prelude_source(include_str!("scripts/admit_named.lua")),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defines(source: &str, name: &str) -> bool {
        source.contains(&format!("local function {name}("))
    }

    #[test]
    fn a_script_gets_the_prelude_functions_it_calls_and_theirs_only() {
        // lease.lua calls same_history, which calls history_now; it never
        // counts who waited.
        let lease = with_prelude_source(include_str!("scripts/lease.lua"));
        assert!(defines(&lease, "same_history"));
        assert!(defines(&lease, "history_now"));
        assert!(defines(&lease, "open_head_first"));
        assert!(!defines(&lease, "count_waited"));
        assert!(!defines(&lease, "load_config"));
        // The prelude's shared locals stay whatever the body.
        assert!(lease.contains("local K_CONFIG, K_SEQ"));
        assert!(lease.contains("local gave_tickets = false"));
    }

    #[test]
    fn every_function_a_kept_part_names_is_kept_before_it() {
        let prelude = include_str!("scripts/prelude.lua");
        let names: Vec<&str> = prelude
            .lines()
            .filter_map(|l| l.strip_prefix("local function ")?.split('(').next())
            .collect();
        for (name, source) in script_names_and_sources() {
            for function in &names {
                let Some(defined) = source.find(&format!("local function {function}(")) else {
                    continue;
                };
                let text = &source[defined..];
                let end = text.find("\nend\n").map_or(text.len(), |e| e + 5);
                for called in &names {
                    if called != function && mentions(&code(&text[..end]), called) {
                        let at = source.find(&format!("local function {called}("));
                        assert!(
                            at.is_some_and(|at| at < defined),
                            "{name}: {function} names {called}, which is not defined before it"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_word_is_named_only_whole() {
        assert!(mentions("x = in_line(cfg)", "in_line"));
        assert!(!mentions("x = in_line_now(cfg)", "in_line"));
        assert!(!mentions("x = not_in_line(cfg)", "in_line"));
    }
}
