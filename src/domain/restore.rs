//! Giving a place back: what a place receipt vouches for, and the one rule
//! both stores apply when a user comes back with it and the store holds no
//! place for them.
//!
//! A store gives a place back only where it cannot have decided the user's
//! fate itself:
//!
//! - in the queue the receipt was issued for (same epoch), a ticket above
//!   every ticket the store has given: the join was lost (a failover to a
//!   replica that had not received it). Any lower ticket missing from the
//!   line was admitted, left, cleared or released, and stays so;
//! - in a queue the service re-made after the store lost it (see
//!   [`Adoption`]), a ticket of the lost queue at or above the lost line's
//!   head: everyone below the head had been admitted or had left.
//!
//! Either way the receipt must be fresh: issued less than the queue's
//! release time before now, counting only from the queue's presence floor
//! (creation, reopening, or the end of an outage: [`super::presence_after_gap`]),
//! so a receipt lapses exactly when its holder would have been released
//! for silence had it been their last sign of life.

/// How many tickets a re-made queue leaves free above the last ticket the
/// service knew the lost queue had given, for those given after it last
/// looked (a refresh's worth of arrivals at a crowd's pace).
pub const REMADE_TICKET_MARGIN: u64 = 100_000;

/// What a place receipt vouches for, besides the queue and user it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaceClaim {
    /// The queue's `created_at_ms` when the receipt was issued.
    pub epoch_ms: u64,
    pub ticket: u64,
    /// The lowest ticket waiting when it was issued, if the issuer knew
    /// (0 if not): everyone below it had been admitted or had left.
    pub head: u64,
    /// The highest ticket given when it was issued, if known (0 if not).
    pub top: u64,
    pub issued_ms: u64,
}

/// A queue re-made after the store lost it takes back the lost queue's
/// places from receipts: those of one earlier epoch (fixed by the first
/// place given back when the service did not know it) at or above `head`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    /// The lost queue's epoch; 0 until known.
    pub epoch_ms: u64,
    /// Tickets below this were admitted or had left.
    pub head: u64,
    /// The last ticket the lost queue is known to have given, with
    /// [`REMADE_TICKET_MARGIN`]: the re-made queue gives tickets after it.
    pub top: u64,
}

/// What the store knows of the queue a receipt is brought back to.
#[derive(Clone, Copy, Debug)]
pub struct RestoreView {
    pub epoch_ms: u64,
    /// The last ticket given.
    pub seq: u64,
    pub presence_since_ms: u64,
    pub release_after_ms: u64,
    pub adoption: Option<Adoption>,
}

/// Why a receipt gave nothing back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It has lapsed ([`receipt_fresh`]): the caller is told so.
    Lapsed,
    /// The store decided this place itself, or it is not the store's to
    /// give back (another queue of the same name, a ticket someone holds,
    /// an opening under way): the call goes on as without a receipt.
    NotGiven,
}

/// What bringing a receipt back to the store did.
#[derive(Clone, Debug, PartialEq)]
pub enum Restoration {
    /// The place, given back.
    Restored(super::Place),
    /// The user holds a place (or was cleared from a closed queue): the
    /// receipt changes nothing.
    Holds,
    Refused(Refusal),
}

/// A place given back: the queue's last ticket and adoption afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    pub seq: u64,
    pub adoption: Option<Adoption>,
}

/// A receipt has lapsed once its holder, silent since it was issued, would
/// have been released.
pub fn receipt_fresh(
    claim: &PlaceClaim,
    presence_since_ms: u64,
    release_after_ms: u64,
    now_ms: u64,
) -> bool {
    // Released once silent longer than the release time (reap's cutoff is
    // strict), so the receipt is good up to and at that instant.
    claim.issued_ms.max(presence_since_ms) + release_after_ms >= now_ms
}

/// Whether the place a receipt vouches for is given back, to a user who
/// holds no place (waiting, admitted, pre-queued or being drawn) and whose
/// ticket nobody else holds; and if so, what the queue keeps afterwards.
pub fn restore_decision(
    queue: &RestoreView,
    claim: &PlaceClaim,
    now_ms: u64,
) -> Result<Restored, Refusal> {
    if !receipt_fresh(
        claim,
        queue.presence_since_ms,
        queue.release_after_ms,
        now_ms,
    ) {
        return Err(Refusal::Lapsed);
    }
    if claim.ticket == 0 {
        return Err(Refusal::NotGiven);
    }
    if claim.epoch_ms == queue.epoch_ms {
        return match claim.ticket > queue.seq {
            true => Ok(Restored {
                seq: claim.ticket,
                adoption: queue.adoption,
            }),
            false => Err(Refusal::NotGiven),
        };
    }
    let Some(adoption) = queue.adoption else {
        return Err(Refusal::NotGiven);
    };
    let lineage = adoption.epoch_ms == 0 || adoption.epoch_ms == claim.epoch_ms;
    let head = adoption.head.max(claim.head);
    if !lineage || claim.epoch_ms >= queue.epoch_ms || claim.ticket < head {
        return Err(Refusal::NotGiven);
    }
    Ok(Restored {
        seq: queue.seq.max(claim.top).max(claim.ticket),
        adoption: Some(Adoption {
            epoch_ms: claim.epoch_ms,
            head,
            top: adoption.top,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(epoch_ms: u64, ticket: u64, issued_ms: u64) -> PlaceClaim {
        PlaceClaim {
            epoch_ms,
            ticket,
            head: 0,
            top: 0,
            issued_ms,
        }
    }

    fn living(seq: u64) -> RestoreView {
        RestoreView {
            epoch_ms: 1_000,
            seq,
            presence_since_ms: 1_000,
            release_after_ms: 10_000,
            adoption: None,
        }
    }

    #[test]
    fn a_living_queue_gives_back_only_a_join_it_lost() {
        let lost = restore_decision(&living(5), &claim(1_000, 6, 2_000), 3_000);
        assert_eq!(lost.map(|r| r.seq), Ok(6));
        // Ticket 5 was given here: whatever became of its holder stands.
        let given = restore_decision(&living(5), &claim(1_000, 5, 2_000), 3_000);
        assert_eq!(given, Err(Refusal::NotGiven));
    }

    #[test]
    fn a_receipt_lapses_when_its_holder_would_have_been_released() {
        assert!(restore_decision(&living(0), &claim(1_000, 1, 2_000), 12_000).is_ok());
        let late = restore_decision(&living(0), &claim(1_000, 1, 2_000), 12_001);
        assert_eq!(late, Err(Refusal::Lapsed));
        // Time the queue could not hear anyone does not count.
        let after_outage = RestoreView {
            presence_since_ms: 30_000,
            ..living(0)
        };
        assert!(restore_decision(&after_outage, &claim(1_000, 1, 2_000), 40_000).is_ok());
    }

    #[test]
    fn another_queue_of_the_same_name_gives_back_nothing_unless_re_made_after_a_loss() {
        let recreated = RestoreView {
            epoch_ms: 50_000,
            presence_since_ms: 50_000,
            ..living(0)
        };
        let other = restore_decision(&recreated, &claim(1_000, 7, 49_000), 51_000);
        assert_eq!(other, Err(Refusal::NotGiven));
        let remade = RestoreView {
            adoption: Some(Adoption::default()),
            ..recreated
        };
        let back = restore_decision(
            &remade,
            &PlaceClaim {
                head: 4,
                top: 9,
                ..claim(1_000, 7, 49_000)
            },
            51_000,
        );
        assert_eq!(
            back,
            Ok(Restored {
                seq: 9,
                adoption: Some(Adoption {
                    epoch_ms: 1_000,
                    head: 4,
                    top: 0,
                })
            })
        );
    }

    #[test]
    fn a_re_made_queue_takes_one_lineage_and_nobody_below_its_head() {
        let remade = RestoreView {
            epoch_ms: 50_000,
            seq: 0,
            presence_since_ms: 50_000,
            release_after_ms: 10_000,
            adoption: Some(Adoption {
                epoch_ms: 1_000,
                head: 4,
                top: 0,
            }),
        };
        let below_head = restore_decision(&remade, &claim(1_000, 3, 49_000), 51_000);
        assert_eq!(below_head, Err(Refusal::NotGiven));
        let other_lineage = restore_decision(&remade, &claim(2_000, 5, 49_000), 51_000);
        assert_eq!(other_lineage, Err(Refusal::NotGiven));
        assert!(restore_decision(&remade, &claim(1_000, 4, 49_000), 51_000).is_ok());
        // A receipt that saw the head further on raises it for everyone.
        let raised = PlaceClaim {
            head: 8,
            ..claim(1_000, 8, 49_000)
        };
        let after = restore_decision(&remade, &raised, 51_000).map(|r| r.adoption);
        assert_eq!(after.map(|a| a.map(|a| a.head)), Ok(Some(8)));
    }
}
