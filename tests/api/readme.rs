//! The README's examples, run: the tour's printed lines against those the
//! README shows, and the by-hand calls, which must form a line.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::*;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The lines of the first fenced block of kind `fence` after `marker`.
fn block_after(text: &str, marker: &str, fence: &str) -> Vec<String> {
    let from = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} in the README"));
    let open = format!("```{fence}\n");
    let start = from + text[from..].find(&open).expect("a block") + open.len();
    let end = start + text[start..].find("```").expect("the block's end");
    text[start..end].lines().map(str::to_owned).collect()
}

/// A line with its numbers (ids, times, figures) made alike, and a token
/// id's digest (its last part) too.
fn shape(line: &str) -> String {
    let line = match line.find("jti ") {
        Some(at) => match line[at..].rfind('.') {
            Some(dot) => format!("{}~", &line[..at + dot + 1]),
            None => line.to_owned(),
        },
        None => line.to_owned(),
    };
    let mut out = String::new();
    let mut in_number = false;
    for c in line.trim_end().chars() {
        match (c.is_ascii_digit(), in_number) {
            (true, false) => {
                out.push('#');
                in_number = true;
            }
            (true, true) => {}
            (false, _) => {
                out.push(c);
                in_number = false;
            }
        }
    }
    out
}

/// An example built beside this test (`cargo test` builds them).
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: `cargo test` builds the examples (or run `cargo build --examples`)",
        path.display()
    );
    path
}

/// The README's tour output is what the tour prints: every line it shows
/// is printed, in its order (numbers aside); a line ending in `...` is the
/// start of one; `...` alone stands for lines left out.
#[tokio::test]
async fn the_tours_output_in_the_readme_is_what_the_tour_prints() {
    let app = TestApp::on_memory().await;
    let mut tour = Command::new(example("tour"));
    tour.args(["--addr", &format!("http://{}", app.addr)]);
    let output = tokio::task::spawn_blocking(move || tour.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(shape)
        .collect();
    let shown = block_after(&readme(), "cargo run --release --example tour", "text");
    let mut next = 0;
    for line in shown.iter().filter(|l| l.trim() != "...") {
        let want = shape(line);
        let found = match want.strip_suffix("...") {
            Some(start) => printed[next..].iter().position(|p| p.starts_with(start)),
            None => printed[next..].iter().position(|p| *p == want),
        };
        let Some(at) = found else {
            panic!(
                "the README shows {line:?}, which the tour does not print after line {next}:\n{}",
                printed.join("\n")
            );
        };
        next += at + 1;
    }
    app.stop().await;
}

/// The README's by-hand calls (`buf curl`, from npm) form a line: Bob is
/// second, then first once Alice is admitted.
#[tokio::test]
async fn the_readmes_calls_by_hand_form_a_line() {
    if Command::new("npx").arg("--version").output().is_err() {
        eprintln!("npx is not installed here: the README's buf curl lines are not run");
        return;
    }
    let app = TestApp::on_memory().await;
    let text = readme();
    let calls: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.strip_prefix("$B -d '"))
        .map(|rest| {
            let (json, url) = rest.split_once("' ").expect("-d 'JSON' URL");
            let url = url.replace("127.0.0.1:50051", &app.addr.to_string());
            (json.to_owned(), url)
        })
        .collect();
    assert_eq!(calls.len(), 6, "the README's by-hand calls");
    let mut answers = Vec::new();
    for (json, url) in calls {
        let mut call = Command::new("npx");
        call.args([
            "--yes",
            "@bufbuild/buf",
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-d",
            &json,
            &url,
        ]);
        let output = tokio::task::spawn_blocking(move || call.output().unwrap())
            .await
            .unwrap();
        assert!(output.status.success(), "{json} {url}: {output:?}");
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        answers.push(answer);
    }
    assert_eq!(answers[3]["place"]["position"], "2", "{:?}", answers[3]);
    assert_eq!(
        answers[4]["admitted"][0]["userId"], "alice",
        "{:?}",
        answers[4]
    );
    assert_eq!(answers[5]["place"]["position"], "1", "{:?}", answers[5]);
    app.stop().await;
}
