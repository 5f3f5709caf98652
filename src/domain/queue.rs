//! A queue's configuration, the operator's changes to it, and its figures.

use std::sync::Arc;
use std::time::Duration;

use super::{QueueId, Signs};

/// How a queue admits users: the operator's switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueMode {
    /// Users wait and are admitted in ticket order.
    Queueing,
    /// The queue is off: everyone is admitted at once, without a cap.
    PassThrough,
    /// Users may join; nobody is admitted.
    Paused,
    /// Nobody may join; waiting users are told. Places are kept.
    Closed,
}

impl QueueMode {
    /// The name stored in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queueing => "queueing",
            Self::PassThrough => "pass_through",
            Self::Paused => "paused",
            Self::Closed => "closed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "queueing" => Self::Queueing,
            "pass_through" => Self::PassThrough,
            "paused" => Self::Paused,
            "closed" => Self::Closed,
            _ => return None,
        })
    }
}

/// A queue's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    pub id: QueueId,
    pub mode: QueueMode,
    /// Most users holding an admission at once; 0 means no cap.
    pub max_active: u32,
    /// Automatic admissions per second across all replicas; 0 means manual.
    pub admit_per_second: u32,
    /// How long an admission lasts unless completed. Whole milliseconds.
    pub admission_ttl: Duration,
    /// How long a waiting user keeps their place without a sign of life.
    pub heartbeat_timeout: Duration,
    /// When the queue was created. Also tells apart two queues that had the
    /// same id at different times, so their token ids never collide.
    pub created_at_ms: u64,
    /// A scheduled opening, if any (see [`super::draw`]).
    pub opens_at_ms: Option<u64>,
    /// How long before the opening users may join the pre-queue.
    pub prequeue_window: Duration,
    /// Kept by the store: the opening draw's seed once it has started.
    pub draw_seed: Option<String>,
    /// Kept by the store: the opening draw has placed everyone.
    pub draw_complete: bool,
    /// Kept by the store: presence is counted from here (creation, or the
    /// last reopening after `CLOSED`), so nobody is reaped for the time a
    /// closed queue gave them no reason to watch.
    pub presence_since_ms: u64,
    /// A message to everyone in line, shown with every place.
    pub notice: Option<Arc<str>>,
    /// Why the queue closed; kept only while it is closed.
    pub closed_reason: Option<Arc<str>>,
    /// Set when the service re-made the queue after the store lost it: the
    /// lost queue's places it takes back from receipts (see
    /// [`super::restore_decision`]). Kept by the store from then on.
    pub adoption: Option<super::Adoption>,
    /// Sub-lines the line is spread over, fixed at creation: 1 (one slot,
    /// the line as it always was) up to [`super::shards::MAX_SHARDS`]
    /// (`docs/design.md`, "One sale over several Redis slots").
    pub shards: u32,
}

impl QueueConfig {
    pub const DEFAULT_ADMISSION_TTL: Duration = Duration::from_secs(600);
    pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(120);
    pub const ADMISSION_TTL_RANGE: (Duration, Duration) =
        (Duration::from_secs(1), Duration::from_secs(24 * 3600));
    pub const HEARTBEAT_TIMEOUT_RANGE: (Duration, Duration) =
        (Duration::from_secs(5), Duration::from_secs(24 * 3600));
    pub const DEFAULT_PREQUEUE_WINDOW: Duration = Duration::from_secs(3600);
    pub const PREQUEUE_WINDOW_RANGE: (Duration, Duration) =
        (Duration::ZERO, Duration::from_secs(7 * 24 * 3600));
    /// Times a queue may name (`opens_at`), in milliseconds since the Unix
    /// epoch: from 1 ms after it, up to (not including) 2200-01-01. Both
    /// stores read every value in it alike, and it stays far inside the
    /// integers Lua's numbers hold exactly and print without an exponent.
    pub const TIME_RANGE_MS: (u64, u64) = (1, 7_258_118_400_000);
    /// How long a user in line may be silent before their place is
    /// released: the heartbeat timeout and a quarter more. The quarter is
    /// the age a recorded sign of life may reach before a newer one is
    /// worth writing ([`Self::presence_stale_ms`]): a poll answered without
    /// a write is then never the one that would have kept the place, and
    /// nobody is released earlier than a whole timeout after their last
    /// sign.
    pub fn release_after_ms(&self) -> u64 {
        release_after_ms(self.heartbeat_timeout.as_millis() as u64)
    }

    /// The age at which a recorded sign of life is worth renewing.
    pub fn presence_stale_ms(heartbeat_ms: u64) -> u64 {
        heartbeat_ms / 4
    }

    /// The longest notice, in characters.
    pub const NOTICE_MAX_CHARS: usize = 280;
    /// The closing reasons every page knows; operators may name others.
    pub const SOLD_OUT: &'static str = "SOLD_OUT";
    pub const CANCELLED: &'static str = "CANCELLED";

    /// A queue with default settings.
    pub fn new(id: QueueId) -> Self {
        Self {
            id,
            mode: QueueMode::Queueing,
            max_active: 0,
            admit_per_second: 0,
            admission_ttl: Self::DEFAULT_ADMISSION_TTL,
            heartbeat_timeout: Self::DEFAULT_HEARTBEAT_TIMEOUT,
            created_at_ms: 0,
            opens_at_ms: None,
            prequeue_window: Self::DEFAULT_PREQUEUE_WINDOW,
            draw_seed: None,
            draw_complete: false,
            presence_since_ms: 0,
            notice: None,
            closed_reason: None,
            adoption: None,
            shards: 1,
        }
    }

    /// What every place in this queue shows besides the place itself.
    pub fn signs(&self) -> Signs {
        Signs {
            notice: self.notice.clone(),
            closed_reason: self.closed_reason.clone(),
        }
    }

    /// Checks a notice: plain text of at most [`Self::NOTICE_MAX_CHARS`]
    /// characters (see [`check_shown_text`]).
    pub fn check_notice(notice: &str) -> Result<(), String> {
        let chars = notice.chars().count();
        if chars > Self::NOTICE_MAX_CHARS {
            return Err(format!(
                "must be at most {} characters, got {chars}",
                Self::NOTICE_MAX_CHARS
            ));
        }
        check_shown_text(notice)
    }

    /// Checks a closing reason: `SOLD_OUT`, `CANCELLED` or an operator's own,
    /// 1 to 64 characters of `[A-Z0-9_]` starting with a letter, so pages can
    /// map it to their own words.
    pub fn check_closed_reason(reason: &str) -> Result<(), String> {
        let well_formed = (1..=64).contains(&reason.len())
            && reason.starts_with(|c: char| c.is_ascii_uppercase())
            && reason
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if well_formed {
            Ok(())
        } else {
            Err(format!(
                "must be SOLD_OUT, CANCELLED or 1 to 64 characters of [A-Z0-9_] starting with a letter, got {reason:?}"
            ))
        }
    }

    /// The queue as created at `now_ms`.
    pub fn created(mut self, now_ms: u64) -> Self {
        self.created_at_ms = now_ms;
        self.presence_since_ms = now_ms;
        self
    }

    /// Applies a change; the fields it leaves out keep their values.
    pub fn apply(&mut self, update: &QueueUpdate) {
        if let Some(mode) = update.mode {
            self.mode = mode;
        }
        if let Some(max_active) = update.max_active {
            self.max_active = max_active;
        }
        if let Some(rate) = update.admit_per_second {
            self.admit_per_second = rate;
        }
        if let Some(ttl) = update.admission_ttl {
            self.admission_ttl = ttl;
        }
        if let Some(timeout) = update.heartbeat_timeout {
            self.heartbeat_timeout = timeout;
        }
        if let Some(opens_at) = update.opens_at {
            self.opens_at_ms = opens_at;
        }
        if let Some(window) = update.prequeue_window {
            self.prequeue_window = window;
        }
        if let Some(notice) = &update.notice {
            self.notice = notice.clone();
        }
        if let Some(reason) = &update.closed_reason {
            self.closed_reason = reason.clone();
        }
        if self.mode != QueueMode::Closed {
            self.closed_reason = None;
        }
    }

    /// Checks the durations are within their documented ranges; returns the
    /// offending field and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        check_range(
            "admission_ttl",
            self.admission_ttl,
            Self::ADMISSION_TTL_RANGE,
        )?;
        check_range(
            "heartbeat_timeout",
            self.heartbeat_timeout,
            Self::HEARTBEAT_TIMEOUT_RANGE,
        )?;
        check_range(
            "prequeue_window",
            self.prequeue_window,
            Self::PREQUEUE_WINDOW_RANGE,
        )?;
        if !(1..=super::shards::MAX_SHARDS).contains(&self.shards) {
            return Err((
                "shards",
                format!(
                    "must be from 1 to {}, got {}",
                    super::shards::MAX_SHARDS,
                    self.shards
                ),
            ));
        }
        let (earliest, latest) = Self::TIME_RANGE_MS;
        match self.opens_at_ms {
            Some(at) if !(earliest..latest).contains(&at) => Err((
                "opens_at",
                format!(
                    "must be after 1970-01-01T00:00:00Z and before 2200-01-01T00:00:00Z, got {at} ms"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// How long the passes of the reaper may stop before the time since is
/// taken as an outage: with a pass a second on every ready replica, a gap
/// this long means no replica could hear anyone (the store did not answer,
/// or no replica was ready), and nobody is released for it.
pub const DEAF_AFTER_MS: u64 = 3_000;

/// The liveness rule, one place for both stores: a reaper's pass at `now_ms`
/// after the last one recorded at `heard_ms` (`None`: none recorded, as after
/// a store came back empty or without the queue's last writes) comes after
/// an outage when the gap exceeds [`DEAF_AFTER_MS`]. Presence then counts
/// from this pass, so every stream has a whole timeout to reconnect and
/// every poller to poll before anyone is released, and [`DEAF_AFTER_MS`]
/// more: the first pass can run before the service is ready again (its
/// breaker still closed to calls, pages waiting for their next retry).
/// Returns the new `presence_since_ms` if it moves.
pub fn presence_after_gap(
    heard_ms: Option<u64>,
    presence_since_ms: u64,
    now_ms: u64,
) -> Option<u64> {
    let deaf = heard_ms.is_none_or(|heard| now_ms > heard.saturating_add(DEAF_AFTER_MS));
    (deaf && now_ms > presence_since_ms).then_some(now_ms + DEAF_AFTER_MS)
}

/// Text shown to people (a notice on every waiting page) is plain text on
/// one line: no control characters, no line or paragraph separators
/// (U+2028, U+2029), and no format characters (Unicode category Cf): bidi
/// overrides and isolates would show the rest of a page reversed or
/// reordered, and zero-width ones hide text from whoever reads it before
/// it is published. Names the first such character and where it is.
pub fn check_shown_text(text: &str) -> Result<(), String> {
    match text.chars().enumerate().find(|(_, c)| not_shown(*c)) {
        Some((at, c)) => Err(format!(
            "must be plain text on one line, without control, format or separator characters: character {} is U+{:04X}",
            at + 1,
            c as u32
        )),
        None => Ok(()),
    }
}

/// Control characters, the line and paragraph separators, and the format
/// characters (category Cf) of Unicode 16.
fn not_shown(c: char) -> bool {
    const FORMAT: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x2028, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let code = c as u32;
    c.is_control()
        || FORMAT
            .iter()
            .any(|(from, to)| (*from..=*to).contains(&code))
}

/// [`QueueConfig::release_after_ms`] of a heartbeat timeout.
pub fn release_after_ms(heartbeat_ms: u64) -> u64 {
    heartbeat_ms + QueueConfig::presence_stale_ms(heartbeat_ms)
}

fn check_range(
    field: &'static str,
    value: Duration,
    (min, max): (Duration, Duration),
) -> Result<(), (&'static str, String)> {
    if value < min || value > max {
        return Err((
            field,
            format!(
                "must be between {} and {}, got {}",
                humantime::format_duration(min),
                humantime::format_duration(max),
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

/// The fields of a queue an operator changes; `None` keeps the current value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueUpdate {
    pub mode: Option<QueueMode>,
    pub max_active: Option<u32>,
    pub admit_per_second: Option<u32>,
    pub admission_ttl: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
    /// `Some(None)` clears the opening.
    pub opens_at: Option<Option<u64>>,
    pub prequeue_window: Option<Duration>,
    /// `Some(None)` clears the notice.
    pub notice: Option<Option<Arc<str>>>,
    /// `Some(None)` clears the reason; a queue that is not closed has none.
    pub closed_reason: Option<Option<Arc<str>>>,
}

/// A queue's gauges and counters.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueStats {
    pub waiting: u64,
    pub active: u64,
    pub enqueued: u64,
    pub admitted: u64,
    pub completed: u64,
    pub expired: u64,
    pub left: u64,
    pub abandoned: u64,
    pub prequeued: u64,
    /// Taken out of line by clearing the queue.
    pub cleared: u64,
    pub rate: super::RateSample,
    pub flow: super::Flow,
}

#[cfg(test)]
mod tests {
    use super::check_shown_text;

    #[test]
    fn shown_text_refuses_what_would_hide_or_reorder_it_and_names_where() {
        for ok in ["Sales resume at 10:30", "Plätze frei · 席あり", "emoji 🎟"] {
            assert_eq!(check_shown_text(ok), Ok(()), "{ok}");
        }
        for (text, at, code) in [
            ("abc\u{202E}fed", 4, "U+202E"),
            ("x\u{2066}y", 2, "U+2066"),
            ("zero\u{200B}width", 5, "U+200B"),
            ("line\u{2028}break", 5, "U+2028"),
            ("bom\u{FEFF}", 4, "U+FEFF"),
            ("tag\u{E0041}", 4, "U+E0041"),
            ("tab\there", 4, "U+0009"),
        ] {
            let why = check_shown_text(text).unwrap_err();
            assert!(why.contains(&format!("character {at} is {code}")), "{why}");
        }
    }
}
