//! The connection to Redis cut and slowed by a proxy in between, under
//! joins and admission: answers lost on the way (a script that ran, its
//! reply cut) are recovered by the request id, nothing acknowledged is
//! lost, nobody is admitted twice, and every failure comes within the
//! timeout.

use std::time::Duration;

use waitroom::testkit::RedisServer;

use crate::ledger;
use crate::proxy::Proxy;
use crate::service::{REDIS_TIMEOUT, Service, queue, scratch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_delayed_connections_lose_nothing_and_admit_nobody_twice() {
    let _serial = crate::one_at_a_time().await;
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let proxy = Proxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let dir = scratch("network");
    let service = Service::start(&proxy.url(), "network", &dir, &[]).await;
    service.create_queue(queue("sale")).await;
    let ledger = ledger::shared();
    let scale = crate::scale() as u32;
    let run = Duration::from_secs(5) * scale;
    let clients = (
        (0..4).map(|_| service.client()).collect(),
        vec![service.client()],
    );
    // Each phase's connection, for a sixth of the run each, after a sixth
    // of it untouched.
    let phases: [&(dyn Fn() + Sync); 6] = [
        &|| {},
        // Slow, under the timeout: calls take longer but succeed.
        &|| proxy.delay(REDIS_TIMEOUT / 3),
        &|| {
            proxy.delay(Duration::ZERO);
            proxy.cut();
        },
        &|| proxy.reopen(),
        // Slower than the timeout: replies arrive after their callers gave up.
        &|| proxy.delay(REDIS_TIMEOUT * 3 / 2),
        &|| proxy.delay(Duration::ZERO),
    ];
    ledger::traffic(clients.0, clients.1, &ledger, run, 15, async {
        let mut phase = crate::wait::every(run / 6);
        for set_up in phases {
            phase.tick().await;
            set_up();
        }
    })
    .await;
    let mut client = service.client();
    ledger::drain(&mut client, &ledger, "sale", "network").await;

    let ledger = ledger.lock().unwrap();
    assert!(
        proxy.connections.load(std::sync::atomic::Ordering::Relaxed) > 1,
        "the service never reconnected"
    );
    ledger.assert_failures_answered_within(REDIS_TIMEOUT + Duration::from_millis(400));
    ledger.assert_nobody_admitted_twice();
    ledger.assert_admitted_in_ticket_order();
    ledger.assert_only_joiners_admitted();
    ledger.assert_every_acknowledged_admitted();
}
