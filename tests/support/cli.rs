//! The `relaymesh` binary run as a user runs it, for the CLI tests.

use std::process::Command;
use std::time::Duration;

/// The `relaymesh` binary.
pub fn relaymesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relaymesh"))
}

/// What `cmd` printed, after asserting that it succeeded.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The node's status, polled until its API answers (10 s at most).
pub fn wait_status(api: u16, what: &str) -> serde_json::Value {
    super::poll(Duration::from_secs(10), || {
        api_json(api, "/relaymesh/v1/status")
    })
    .expect(what)
}

/// `path` of the API on port `api`, as JSON, if it answers.
pub fn api_json(api: u16, path: &str) -> Option<serde_json::Value> {
    let url = format!("http://127.0.0.1:{api}{path}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async { reqwest::get(&url).await.ok()?.json().await.ok() })
}
