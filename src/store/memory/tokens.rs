//! Checking an admission online, and the ledger of consumed token ids
//! (outliving their queue, each remembered for as long as a verifier could
//! accept it; the Redis twin is `check_admission.lua`).

use super::Inner;
use crate::domain::{AdmissionCheck, AdmissionStatus, QueueId};

impl Inner {
    /// Whether `check`'s admission is still held, and, consuming it,
    /// whether it was consumed before (by this request or another).
    pub(super) fn check_admission(
        &mut self,
        queue: &QueueId,
        check: &AdmissionCheck,
        now_ms: u64,
    ) -> AdmissionStatus {
        while let Some((until, _, _)) = self.used_by_expiry.first() {
            if *until > now_ms {
                break;
            }
            if let Some((_, queue, token)) = self.used_by_expiry.pop_first() {
                self.used_tokens.remove(&(queue, token));
            }
        }
        let key = (queue.clone(), check.token_id.clone());
        if let Some(consume) = &check.consume
            && let Some((_, by)) = self.used_tokens.get(&key)
        {
            return if *by == consume.request {
                AdmissionStatus::Held
            } else {
                AdmissionStatus::Used
            };
        }
        let held = self.queues.get(queue).is_some_and(|state| {
            state.config.created_at_ms == check.queue_epoch_ms
                && state.admissions.admitted.get(&check.user).is_some_and(|a| {
                    a.ticket == check.ticket
                        && check.admitted_at_ms.is_none_or(|at| at == a.admitted_at_ms)
                        && a.expires_at_ms > now_ms
                })
        });
        if !held {
            return AdmissionStatus::Revoked;
        }
        if let Some(consume) = &check.consume {
            let until = consume.remember_until_ms.max(now_ms + 1);
            self.used_by_expiry
                .insert((until, key.0.clone(), key.1.clone()));
            self.used_tokens
                .insert(key, (until, consume.request.clone()));
        }
        AdmissionStatus::Held
    }
}
