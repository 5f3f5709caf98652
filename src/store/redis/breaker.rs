//! Calls bounded by the timeout, and held back while Redis does not
//! answer (the breaker), with every failure made one of the store's errors.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::RedisError;

use super::topology::{Connection, Connector, Single};
use crate::telemetry::metrics::{StoreErrorLabels, StoreLabels, metrics};
use crate::{Error, Result};

/// Stops sending calls to a Redis that does not answer. A call sent to a
/// stalled Redis waits in its socket and runs when Redis comes back, long
/// after its caller was told it failed; so once a call finds Redis
/// unreachable (no reply at all: a timeout, a broken connection; an error
/// reply is an answer), calls fail at once, unsent, until Redis answers
/// again. A call arriving [`Breaker::PROBE_EVERY`] after the last probe
/// probes: with a `PING` on a single Redis (and goes ahead if answered).
///
/// On a Cluster each slot's calls trip and probe on their own (a `PING`
/// there asks every primary, so the call itself is the probe): one shard
/// down leaves the queues of the others alone, and the sub-lines of a
/// queue kept over several slots are scoped by their own hash tags, so
/// one sub-line's primary down leaves the others' calls alone.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    /// By scope (`""` for a single Redis and calls not of one queue, the
    /// queue's id on a Cluster): when the last probe was sent. Absent while
    /// Redis answers.
    tripped: Mutex<HashMap<String, std::time::Instant>>,
}

/// What a call does, as the breaker stands.
pub(super) enum Pass {
    Send,
    Probe,
    Refuse,
}

/// Where a call goes, for the breaker: its scope, and the connection a
/// probe may `PING` through (`None`: the call itself probes).
pub(super) struct Guard<'a> {
    breaker: &'a Breaker,
    scope: &'a str,
    ping: Option<Connection>,
    /// Replaced when the server answers `READONLY` (with the number of the
    /// connection the call went on).
    single: Option<(&'a Single, u64)>,
}

impl Breaker {
    const PROBE_EVERY: Duration = Duration::from_millis(250);

    /// Scopes tripped at once beyond which more fall back to the shared one:
    /// made-up queue ids on a dead shard must not grow the map.
    const MAX_SCOPES: usize = 10_000;

    fn pass(&self, scope: &str) -> Pass {
        let mut tripped = self.tripped.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(last) = tripped.get_mut(scope) else {
            return Pass::Send;
        };
        if last.elapsed() >= Self::PROBE_EVERY {
            *last = std::time::Instant::now();
            Pass::Probe
        } else {
            Pass::Refuse
        }
    }

    /// Whether calls of a Cluster slot's `scope` are held back now: a read
    /// that can do without one's answer skips it. (The shared scope, which
    /// a Cluster's calls not of one queue trip, holds back no slot's.)
    pub(super) fn holds_back(&self, scope: &str) -> bool {
        let tripped = self.tripped.lock().unwrap_or_else(PoisonError::into_inner);
        tripped.contains_key(scope)
    }

    fn answered(&self, scope: &str) {
        let mut tripped = self.tripped.lock().unwrap_or_else(PoisonError::into_inner);
        if !tripped.is_empty() {
            tripped.remove(scope);
        }
    }

    fn unreachable(&self, scope: &str) {
        let mut tripped = self.tripped.lock().unwrap_or_else(PoisonError::into_inner);
        let scope = if tripped.len() < Self::MAX_SCOPES || tripped.contains_key(scope) {
            scope
        } else {
            ""
        };
        tripped
            .entry(scope.to_owned())
            .or_insert_with(std::time::Instant::now);
    }
}

impl Guard<'_> {
    /// The call found Redis unreachable.
    fn unreachable(&self) {
        self.breaker.unreachable(self.scope);
        if let Some((single, number)) = self.single {
            single.unanswered(number);
        }
    }

    /// Whether the call may be sent now; probes with a `PING` when one is
    /// due. Returns the time the call has left of `timeout`.
    async fn let_through(&self, timeout: Duration) -> Result<Duration> {
        let refused =
            || Error::Unavailable("Redis did not answer recently; the call was not sent".into());
        match self.breaker.pass(self.scope) {
            Pass::Send => Ok(timeout),
            Pass::Refuse => Err(refused()),
            Pass::Probe => {
                let Some(mut conn) = self.ping.clone() else {
                    return Ok(timeout);
                };
                let started = std::time::Instant::now();
                let ping = redis::cmd("PING");
                match tokio::time::timeout(timeout, ping.query_async::<String>(&mut conn)).await {
                    Ok(Ok(_)) => {
                        self.breaker.answered(self.scope);
                        Ok(timeout.saturating_sub(started.elapsed()))
                    }
                    _ => {
                        if let Some((single, number)) = self.single {
                            single.unanswered(number);
                        }
                        Err(refused())
                    }
                }
            }
        }
    }
}

/// The guard of a call made before there is a connection to probe with.
pub(super) fn unprobed(breaker: &Breaker) -> Guard<'_> {
    Guard {
        breaker,
        scope: "",
        ping: None,
        single: None,
    }
}

/// The guard of a call on `conn`, of `queue` when it is a queue's.
pub(super) fn guard<'a>(
    breaker: &'a Breaker,
    connector: &'a Connector,
    conn: &Connection,
    scope: Option<&'a str>,
) -> Guard<'a> {
    match (conn, scope) {
        (Connection::Cluster(_), Some(scope)) => Guard {
            breaker,
            scope,
            ping: None,
            single: None,
        },
        _ => Guard {
            breaker,
            scope: "",
            ping: Some(conn.clone()),
            single: match conn {
                Connection::Single(_, number) => connector.single().map(|s| (s, *number)),
                Connection::Cluster(_) => None,
            },
        },
    }
}

/// How late, at least, a call's time must have run out to say that this
/// process was not running meanwhile (see [`ran_out_stalled`]).
const STALLED_AT_LEAST: Duration = Duration::from_millis(100);

/// Whether a call started at `started`, given `limit`, ran out of time
/// while this process was not running (stopped, its machine paused, its
/// runtime starved): its timer fired later than its own length past its
/// deadline. Such a timeout says nothing of Redis, whose answer may be in
/// the socket already, unread: the connection's task had no turn to read
/// it before the timers' (this one's, and the Redis client's own, which
/// runs inside the call). The call still fails, but trips nothing, so the
/// calls sent after a stall of the service are sent.
fn ran_out_stalled(started: tokio::time::Instant, limit: Duration) -> bool {
    started.elapsed() > limit + limit.max(STALLED_AT_LEAST)
}

/// One Redis round trip, bounded by the timeout and measured, unless the
/// breaker holds it back (see [`Breaker`]).
pub(super) async fn bounded<T>(
    operation: &'static str,
    timeout: Duration,
    guard: Guard<'_>,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    let left = match guard.let_through(timeout).await {
        Ok(left) => left,
        Err(error) => {
            metrics()
                .store_errors
                .get_or_create(&StoreErrorLabels {
                    operation,
                    kind: "unavailable",
                })
                .inc();
            return Err(error);
        }
    };
    let started = tokio::time::Instant::now();
    let result = match tokio::time::timeout(left, call).await {
        Ok(Ok(value)) => {
            guard.breaker.answered(guard.scope);
            Ok(value)
        }
        Ok(Err(error)) => {
            // An error reply (READONLY, BUSY, LOADING..., or a script's
            // own) is an answer: Redis is there and did not run the call.
            if matches!(
                error.kind(),
                redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
            ) {
                guard.breaker.answered(guard.scope);
                // A replica (a demoted master), or a master whose replica
                // left it (`min-replicas-to-write`; perhaps promoted): the
                // master may be elsewhere now.
                let demoted = error.kind()
                    == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                    || error.code() == Some("NOREPLICAS");
                if demoted && let Some((single, number)) = guard.single {
                    single.replace(number);
                }
            } else if !(error.is_timeout() && ran_out_stalled(started, left)) {
                guard.unreachable();
            }
            Err(classify(error))
        }
        Err(_) => {
            if !ran_out_stalled(started, left) {
                guard.unreachable();
            }
            Err(Error::Unavailable(format!(
                "no answer from Redis within {timeout:?}"
            )))
        }
    };
    let m = metrics();
    m.store_seconds
        .get_or_create(&StoreLabels { operation })
        .observe(started.elapsed().as_secs_f64());
    if let Err(error) = &result {
        let kind = match error {
            Error::Unavailable(_) => "unavailable",
            _ => "internal",
        };
        m.store_errors
            .get_or_create(&StoreErrorLabels { operation, kind })
            .inc();
    }
    result
}

/// How an `Internal` error of a call refused because its queue is kept
/// over sub-lines begins (`prelude.lua`'s `SUBLINES` error reply): the
/// store routes the calls it serves over them, and the others fail so.
pub(super) const SUB_LINES: &str = "not served over the queue's sub-lines";

/// What a call on a sub-line is refused with while the sub-line is in a
/// new history (`prelude.lua`'s `RESYNC` error reply): the store resyncs it
/// and calls again.
pub(super) const SUB_LINE_RESYNC: &str = "the sub-line is in a new history";

/// What a call on a queue over sub-lines is refused with while its
/// scheduled opening is due and not made (`prelude.lua`'s `OPENING` error
/// reply): the store makes it (`opening.rs`) and calls again.
pub(super) const SUB_LINE_OPENING: &str = "the queue opens now";

/// Failures to get an answer are `Unavailable` (retry); answers we cannot
/// read, or a script's own error, are bugs and `Internal`.
pub(super) fn classify(error: RedisError) -> Error {
    use redis::ErrorKind;
    if error.code() == Some("SUBLINES") {
        return Error::Internal(format!("{SUB_LINES}: {error}"));
    }
    if error.code() == Some("OPENING") {
        return Error::Internal(format!("{SUB_LINE_OPENING}: {error}"));
    }
    if error.code() == Some("RESYNC") {
        return Error::Internal(format!("{SUB_LINE_RESYNC}: {error}"));
    }
    match error.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => Error::Internal(error.to_string()),
        ErrorKind::Server(_) if error.code() == Some("ERR") => Error::Internal(error.to_string()),
        _ => Error::Unavailable(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_held_back_by_its_own_scope_not_by_the_shared_one() {
        let breaker = Breaker::default();
        // A Cluster's calls not of one queue (the readiness PING among
        // them) trip the shared scope when any primary is lost.
        breaker.unreachable("");
        assert!(!breaker.holds_back("sale/3~1"));
        breaker.unreachable("sale/3~1");
        assert!(breaker.holds_back("sale/3~1"));
        assert!(!breaker.holds_back("sale/3~0"));
        breaker.answered("sale/3~1");
        assert!(!breaker.holds_back("sale/3~1"));
    }

    /// A call as the Redis client makes it: its own timer of `limit`
    /// inside, which answers a timeout error.
    async fn call_with_its_own_timer(
        limit: Duration,
        answered: tokio::sync::oneshot::Receiver<()>,
    ) -> redis::RedisResult<&'static str> {
        match tokio::time::timeout(limit, answered).await {
            Ok(_) => Ok("answered"),
            Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        }
    }

    /// A call of `limit` on a one-thread runtime that the whole process
    /// stops for `stall` from `at` into the call, as under SIGSTOP; the
    /// connection's task reads Redis's answer a turn after the call's
    /// timers have fired. What the call got, and the breaker after it.
    async fn stopped_mid_call(
        limit: Duration,
        at: Duration,
        stall: Duration,
    ) -> (Result<&'static str>, Breaker) {
        let breaker = Breaker::default();
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            std::thread::sleep(stall);
            tokio::time::sleep(Duration::from_millis(5)).await;
            let _ = answer.send(());
        });
        let call = call_with_its_own_timer(limit, answered);
        let got = bounded("test", limit, unprobed(&breaker), call).await;
        (got, breaker)
    }

    #[tokio::test]
    async fn a_call_that_ran_out_while_the_process_was_stopped_trips_nothing() {
        let limit = Duration::from_millis(100);
        // Stopped early and late in the call, for three and seven times
        // its limit.
        for at in [20, 90] {
            for stall in [300, 700] {
                let (at, stall) = (Duration::from_millis(at), Duration::from_millis(stall));
                let (got, breaker) = stopped_mid_call(limit, at, stall).await;
                assert!(matches!(got, Err(Error::Unavailable(_))), "{got:?}");
                assert!(
                    !breaker.holds_back(""),
                    "tripped by a stop of {stall:?} at {at:?}"
                );
                // The next call is sent.
                let next = async { Ok::<_, RedisError>("sent") };
                let got = bounded("test", limit, unprobed(&breaker), next).await;
                assert_eq!(got.ok(), Some("sent"));
            }
        }
        // A stop shorter than the limit's own length past the deadline
        // cannot be told from a slow Redis, and trips.
        let short = Duration::from_millis(100);
        let (_, breaker) = stopped_mid_call(limit, Duration::from_millis(20), short).await;
        assert!(breaker.holds_back(""), "a short stop");

        // A Redis that does not answer while the process runs trips it,
        // whichever timer runs out first.
        let breaker = Breaker::default();
        let (_kept, silent) = tokio::sync::oneshot::channel::<()>();
        let call = call_with_its_own_timer(limit, silent);
        let got = bounded("test", limit, unprobed(&breaker), call).await;
        assert!(matches!(got, Err(Error::Unavailable(_))), "{got:?}");
        assert!(breaker.holds_back(""));
        breaker.answered("");
        let silent = std::future::pending::<redis::RedisResult<()>>();
        let got = bounded("test", limit, unprobed(&breaker), silent).await;
        assert!(matches!(got, Err(Error::Unavailable(_))), "{got:?}");
        assert!(breaker.holds_back(""));
    }
}
