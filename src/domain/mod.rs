//! The queue's plain types and the rules that need no store: validated ids
//! (`ids`), a queue's configuration and figures (`queue`), places and
//! admissions (`place`), the clock (`clock`), the wait estimate
//! (`estimate`), the opening draw (`draw`), positions counted from a copy
//! of the line (`line`, `ranks`), a place given back from its receipt
//! (`restore`), an admission's online check (`check`), and the rules of a
//! queue over several sub-lines (`shards`, applied so far by the memory store).
//! Nothing here knows gRPC or Redis.

mod check;
mod clock;
pub mod draw;
mod estimate;
mod ids;
mod line;
mod place;
mod queue;
mod ranks;
mod restore;
pub mod shards;

pub use check::{AdmissionCheck, AdmissionStatus, Consume};
pub use clock::{Clock, ManualClock, SystemClock};
pub use estimate::{
    Estimate, EstimateBasis, FLOW_SLOT_MS, Flow, RATE_WINDOW_MS, RECENT_MS, RateSample,
    WAITED_BOUNDS_S, WAITED_SLOT_MS, WAITED_WINDOW_MS, first_flow_slot, flow_span_ms,
    per_second_over_window, waited_bucket,
};
pub use ids::{QueueId, RequestId, UserId, instance_id};
pub use line::{DrawHold, LINE_LOG_KEEP, LineChanges, LineEvent, LineSnapshot, LineSummary};
pub use place::{Admission, Admitted, NamedAdmission, Place, PlaceState, Signs};
pub use queue::{
    DEAF_AFTER_MS, QueueConfig, QueueMode, QueueStats, QueueUpdate, check_shown_text,
    presence_after_gap, release_after_ms,
};
pub use ranks::RankIndex;
pub use restore::{
    Adoption, PlaceClaim, REMADE_TICKET_MARGIN, Refusal, Restoration, RestoreView, Restored,
    receipt_fresh, restore_decision,
};
