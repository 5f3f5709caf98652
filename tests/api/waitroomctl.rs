//! `waitroomctl` driven end to end, as an operator's script would.

use std::process::Output;

use waitroom::pb;

use crate::helpers::*;

async fn ctl(app: &TestApp, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_waitroomctl"));
    command
        .arg("--addr")
        .arg(format!("http://{}", app.addr))
        .args(args)
        .env_remove("WAITROOM_API_KEY")
        .env_remove("WAITROOMCTL_OUTPUT");
    tokio::task::spawn_blocking(move || command.output().expect("running waitroomctl"))
        .await
        .unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn an_operator_runs_a_sale_with_waitroomctl() {
    let (app, _redis) = TestApp::on_redis().await;
    let created = ctl(
        &app,
        &[
            "queue",
            "create",
            "sale",
            "--max-active",
            "2",
            "--admission-ttl",
            "5m",
        ],
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    assert!(
        text(&created).contains("admission_ttl      5m"),
        "{}",
        text(&created)
    );
    let again = ctl(&app, &["queue", "create", "sale"]).await;
    assert_eq!(again.status.code(), Some(4), "already exists is a refusal");

    let listed = ctl(&app, &["--output", "json", "queue", "list"]).await;
    assert_eq!(json(&listed)[0]["id"], "sale");
    let table = ctl(&app, &["queue", "list"]).await;
    assert!(text(&table).starts_with("ID"), "{}", text(&table));

    for user in ["a", "b", "c", "d"] {
        assert!(ctl(&app, &["enqueue", "sale", user]).await.status.success());
    }
    let place = json(&ctl(&app, &["-o", "json", "enqueue", "sale", "d"]).await);
    assert_eq!(
        (place["state"].as_str(), place["position"].as_u64()),
        (Some("waiting"), Some(2))
    );

    let paused = ctl(&app, &["queue", "mode", "sale", "paused"]).await;
    assert_eq!(text(&paused).trim(), "sale is now paused");
    let refused = ctl(&app, &["admit", "sale", "1"]).await;
    assert_eq!(refused.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("paused"));
    assert!(
        ctl(&app, &["queue", "mode", "sale", "queueing"])
            .await
            .status
            .success()
    );
    let updated = json(
        &ctl(
            &app,
            &[
                "-o",
                "json",
                "queue",
                "update",
                "sale",
                "--max-active",
                "10",
            ],
        )
        .await,
    );
    assert_eq!(updated["max_active"], 10);

    // A watcher follows d's place until admitted while the operator admits.
    let watcher = {
        let addr = app.addr;
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_waitroomctl"))
                .args(["--addr", &format!("http://{addr}"), "watch", "sale", "d"])
                .output()
                .expect("running waitroomctl watch")
        })
    };
    wait_until(
        "the watcher to connect",
        std::time::Duration::from_secs(10),
        || async { app.hub.watcher_count() > 0 },
    )
    .await;
    let admitted = json(&ctl(&app, &["-o", "json", "admit", "sale", "5"]).await);
    assert_eq!(admitted.as_array().unwrap().len(), 2);
    let watched = watcher.await.unwrap();
    assert!(watched.status.success(), "{watched:?}");
    let lines = text(&watched);
    assert!(lines.contains("position       2 of 2"), "{lines}");
    assert!(lines.contains("admitted"), "{lines}");
    let token = lines
        .lines()
        .find_map(|l| l.strip_prefix("token "))
        .expect("the token is printed")
        .to_owned();

    let valid = ctl(&app, &["verify", "sale", &token, "--consume"]).await;
    assert!(valid.status.success(), "{valid:?}");
    let replay = ctl(&app, &["-o", "json", "verify", "sale", &token, "--consume"]).await;
    assert_eq!(replay.status.code(), Some(7));
    assert_eq!(json(&replay)["verdict"], "already_used");

    let stats = json(&ctl(&app, &["-o", "json", "queue", "stats", "sale"]).await);
    assert_eq!(
        (
            stats["enqueued_total"].as_u64(),
            stats["admitted_total"].as_u64()
        ),
        (Some(4), Some(4))
    );
    let health = ctl(&app, &["health"]).await;
    assert!(health.status.success());
    assert!(text(&health).contains("SERVING"));
    assert_eq!(
        ctl(&app, &["queue", "get", "nope"]).await.status.code(),
        Some(3)
    );
    // Nobody waiting: no back of the line to wait at, and it says so.
    let shown = text(&ctl(&app, &["queue", "stats", "sale"]).await);
    assert!(shown.contains("none (nobody waiting)"), "{shown}");
    // With people in it, a delete needs --yes, and says what it would drop.
    let refused = ctl(&app, &["queue", "delete", "sale"]).await;
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("admitted") && said.contains("--yes"),
        "{said}"
    );
    assert_eq!(
        ctl(&app, &["queue", "stats", "sale"]).await.status.code(),
        Some(0)
    );
    assert!(
        ctl(&app, &["queue", "delete", "sale", "--yes"])
            .await
            .status
            .success()
    );
    assert_eq!(
        ctl(&app, &["queue", "stats", "sale"]).await.status.code(),
        Some(3)
    );
    // People waiting are counted before a delete too.
    let created = ctl(&app, &["queue", "create", "line", "--max-active", "1"]).await;
    assert!(created.status.success(), "{created:?}");
    for user in ["a", "b", "c"] {
        assert!(ctl(&app, &["enqueue", "line", user]).await.status.success());
    }
    let refused = ctl(&app, &["queue", "delete", "line"]).await;
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("drops 2 people in line and 1 admitted"),
        "{said}"
    );
    assert_eq!(app.stats("line").await.waiting_count, 2);
    // An empty queue goes without asking.
    assert!(
        ctl(&app, &["queue", "create", "empty"])
            .await
            .status
            .success()
    );
    assert!(
        ctl(&app, &["queue", "delete", "empty"])
            .await
            .status
            .success()
    );
    assert_eq!(
        ctl(&app, &["queue", "create", "bad id"])
            .await
            .status
            .code(),
        Some(4)
    );
}

#[tokio::test]
async fn waitroomctl_says_when_the_service_cannot_be_reached() {
    let port = waitroom::testkit::free_port().unwrap();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_waitroomctl"))
            .args(["--addr", &format!("http://127.0.0.1:{port}"), "health"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach the service"));
}

#[tokio::test]
async fn admitting_the_largest_batch_is_received_whole_and_a_failed_call_names_its_request_id() {
    let app = TestApp::on_memory().await;
    app.create_queue(queue("sale")).await;
    let client = app.client().await;
    let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    for chunk in users.chunks(500) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|user| {
                let (mut client, user) = (client.clone(), user.clone());
                tokio::spawn(async move { enqueue(&mut client, "sale", &user).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
    }
    let output = ctl(&app, &["-o", "json", "admit", "sale", "10000"]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(json(&output).as_array().unwrap().len(), 10_000);
    assert_eq!(app.stats("sale").await.waiting_count, 0);
    // Unanswered: the message tells how to retry safely.
    let (app, mut redis) = TestApp::on_redis().await;
    app.create_queue(queue("sale")).await;
    redis.stop();
    let failed = ctl(&app, &["admit", "sale", "1"]).await;
    assert_eq!(failed.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("--request-id ctl:"), "{stderr}");
}

#[tokio::test]
async fn the_sale_day_runbook_runs_with_waitroomctl() {
    let (app, _redis) = TestApp::on_redis().await;
    let mut client = app.client().await;
    app.create_queue(queue("drop")).await;
    for user in ["a", "b", "c", "d"] {
        enqueue(&mut client, "drop", user).await;
    }

    // A notice to everyone in line.
    let posted = ctl(&app, &["notice", "drop", "Limit 4 tickets per person"]).await;
    assert!(posted.status.success(), "{posted:?}");
    assert_eq!(
        rank(&mut client, "drop", "b").await.notice,
        "Limit 4 tickets per person"
    );

    // The support desk admits someone out of turn; a retry with the same id
    // admits nobody else.
    let desk = [
        "--output",
        "json",
        "admit-users",
        "drop",
        "c",
        "walk-in",
        "--request-id",
        "desk-7",
    ];
    let first = json(&ctl(&app, &desk).await);
    assert_eq!(first[0]["user_id"], "c");
    assert_eq!(first[0]["result"], "admitted");
    assert_eq!(first[1]["result"], "admitted");
    let again = json(&ctl(&app, &desk).await);
    assert_eq!(again[0]["ticket"], first[0]["ticket"]);
    assert_eq!(app.stats("drop").await.admitted_total, 2);
    let table = ctl(&app, &["admit-users", "drop", "a"]).await;
    assert!(table.status.success(), "{table:?}");
    assert!(text(&table).contains("a     admitted"), "{}", text(&table));

    // The live view, twice, for a script.
    let top = ctl(
        &app,
        &[
            "--output",
            "json",
            "top",
            "--count",
            "2",
            "--interval",
            "100ms",
        ],
    )
    .await;
    assert!(top.status.success(), "{top:?}");
    let frames: Vec<serde_json::Value> = text(&top)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1][0]["queue_id"], "drop");
    assert_eq!(frames[1][0]["waiting"], 2);
    assert_eq!(frames[1][0]["mode"], "queueing");
    let table = ctl(&app, &["top", "--count", "1"]).await;
    assert!(text(&table).contains("ARRIVALS/S"), "{}", text(&table));

    // Sold out, then the line cleared (which asks to be sure).
    let closed = ctl(&app, &["close", "drop"]).await;
    assert!(
        text(&closed).contains("drop is closed: SOLD_OUT"),
        "{closed:?}"
    );
    assert_eq!(
        rank(&mut client, "drop", "b").await.closed_reason,
        "SOLD_OUT"
    );
    let unsure = ctl(&app, &["clear", "drop"]).await;
    assert_eq!(unsure.status.code(), Some(2), "{unsure:?}");
    let cleared = json(&ctl(&app, &["--output", "json", "clear", "drop", "--yes"]).await);
    assert_eq!(cleared["cleared"], 2);
    let place = rank(&mut client, "drop", "b").await;
    assert_eq!(place.closed_reason, "CANCELLED");
    let stats = json(&ctl(&app, &["--output", "json", "queue", "stats", "drop"]).await);
    assert_eq!(stats["cleared_total"], 2);
    let bad = ctl(&app, &["close", "drop", "--reason", "sold out"]).await;
    assert_eq!(bad.status.code(), Some(4), "{bad:?}");
}

/// Run without a server: the tool's own help and scripts.
fn ctl_offline(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_waitroomctl"))
        .args(args)
        .output()
        .expect("running waitroomctl")
}

#[tokio::test]
async fn the_tool_speaks_plainly_host_port_offsets_one_mode_spelling_reasons_and_completion() {
    let app = TestApp::on_memory().await;
    // host:port, without a scheme.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_waitroomctl"));
    command.args(["--addr", &app.addr.to_string(), "health"]);
    // The service runs on this test's thread: wait for the tool elsewhere.
    let bare = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(bare.status.success(), "{bare:?}");
    // An RFC 3339 time with an offset is the same moment as in UTC.
    let created = ctl(
        &app,
        &[
            "--output",
            "json",
            "queue",
            "create",
            "launch",
            "--opens-at",
            "2027-01-01T19:00:00+01:00",
        ],
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    let opens = json(&created)["opens_at"].clone();
    assert!(opens.to_string().contains("2027-01-01T18:00:00"), "{opens}");
    // The mode as the service spells it (the old spelling still taken).
    for spelling in ["pass_through", "pass-through"] {
        let set = ctl(&app, &["queue", "mode", "launch", spelling]).await;
        assert!(set.status.success(), "{spelling}: {set:?}");
    }
    // A full queue admits nobody, and says why.
    app.create_queue(pb::Queue {
        max_active: 1,
        ..queue("full")
    })
    .await;
    let mut client = app.client().await;
    enqueue(&mut client, "full", "first").await;
    enqueue(&mut client, "full", "second").await;
    let admitted = ctl(&app, &["admit", "full", "1"]).await;
    assert!(admitted.status.success());
    assert!(
        text(&admitted).contains("admitted 0: the queue is full: 1 admitted of max_active 1"),
        "{}",
        text(&admitted)
    );
    // A queue that does not exist is not a reason to retry.
    let missing = ctl(&app, &["admit-users", "nope", "alice"]).await;
    assert_eq!(missing.status.code(), Some(3));
    assert!(!String::from_utf8_lossy(&missing.stderr).contains("retry"));
    // Help: connection flags apart, every command with an example.
    let help =
        String::from_utf8_lossy(&ctl_offline(&["queue", "create", "--help"]).stdout).into_owned();
    let (settings, connection) = (
        help.find("Queue settings:").expect("a settings section"),
        help.find("Connection:").expect("a connection section"),
    );
    assert!(
        help[settings..connection].contains("--max-active"),
        "{help}"
    );
    assert!(!help[settings..connection].contains("--addr"), "{help}");
    for command in [
        "admit",
        "admit-users",
        "notice",
        "close",
        "clear",
        "top",
        "enqueue",
        "watch",
        "verify",
        "health",
        "sleep",
        "completion",
    ] {
        let help = ctl_offline(&[command, "--help"]);
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("Example:"),
            "{command}"
        );
    }
    let admit_users =
        String::from_utf8_lossy(&ctl_offline(&["admit-users", "--help"]).stdout).into_owned();
    assert!(
        admit_users.starts_with("Admit named users"),
        "{admit_users}"
    );
    // Completion scripts.
    for shell in ["bash", "zsh", "fish"] {
        let script = ctl_offline(&["completion", shell]);
        assert!(script.status.success());
        assert!(
            String::from_utf8_lossy(&script.stdout).contains("admit-users"),
            "{shell}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_queue_is_made_over_several_sub_lines_only_where_the_store_serves_them() {
    let app = TestApp::on_memory().await;
    let created = ctl(
        &app,
        &["-o", "json", "queue", "create", "big", "--shards", "4"],
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    assert_eq!(json(&created)["shards"], 4);
    let shown = ctl(&app, &["queue", "get", "big"]).await;
    assert!(
        text(&shown).contains("shards             4"),
        "{}",
        text(&shown)
    );
    app.stop().await;

    let (app, _redis) = TestApp::on_redis().await;
    let refused = ctl(&app, &["queue", "create", "big", "--shards", "2"]).await;
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("shards") && said.contains("one slot"),
        "{said}"
    );
    let plain = ctl(&app, &["-o", "json", "queue", "create", "big"]).await;
    assert_eq!(json(&plain)["shards"], 1);
    app.stop().await;
}
