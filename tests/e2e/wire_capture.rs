//! Records every request the harness sends and the answer it got, for `dev/wire-diff`: a
//! change meant to keep behaviour (a restructuring) runs the e2e suite against the old and
//! the new binary and compares what each answered, including the answers no test asserts.
//!
//! Off unless `TIDEMARK_WIRE_CAPTURE` names a directory. Each test appends to a file named
//! after its thread (the test's name), one JSON object per exchange, in the order sent.

use std::io::Write as _;

pub(crate) fn record(method: &str, path: &str, sent: &[u8], status: u16, answer: &[u8]) {
    let Some(dir) = std::env::var_os("TIDEMARK_WIRE_CAPTURE") else {
        return;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("unnamed").replace("::", "__");
    let line = serde_json::json!({
        "method": method,
        "path": path,
        "sent": String::from_utf8_lossy(sent),
        "status": status,
        "answer": String::from_utf8_lossy(answer),
    });
    let file = std::path::Path::new(&dir).join(format!("{test}.jsonl"));
    // One writer at a time: threads of one test (and unnamed threads of several) share a
    // file, and appends longer than a pipe buffer may interleave.
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        panic!("wire capture into {}: {e}", file.display());
    }
}
