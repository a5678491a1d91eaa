//! The command line and the log stream as a person or a log shipper sees them.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Gateway, Upstream, config, get};

#[test]
fn no_arguments_prints_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .output()
        .expect("run shardgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("Usage: shardgate"), "{text}");
    assert!(text.contains("validate"), "{text}");
    assert!(text.contains("--config"), "{text}");
}

/// stderr is a file here, as under systemd or a container runtime: no escape codes in it.
#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let up = Upstream::echo();
    let gw = Gateway::start(&config(&[&up.node()], "", "", ""), &[]);
    assert_eq!(get(gw.addr(), "/hello", &[]).status, 200);
    assert_eq!(get(gw.addr(), "/", &[("Host", "bad host")]).status, 400);
    assert!(gw.wait_log("shardgate started", Duration::from_secs(5)));
    let log = gw.log();
    assert!(log.contains("access"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file:\n{log:?}"
    );
}

/// `--log-format json`: every line is one JSON object, and the access line carries the fields a
/// log shipper filters on, as fields rather than inside the message.
#[test]
fn json_logs_are_one_object_per_line_with_access_fields() {
    let up = Upstream::echo();
    let gw = Gateway::start(
        &config(&[&up.node()], "", "", ""),
        &["--log-format", "json"],
    );
    assert_eq!(get(gw.addr(), "/json-check", &[]).status, 200);
    assert!(gw.wait_log("/json-check", Duration::from_secs(5)));
    let log = gw.log();
    let mut access = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v.get(key).is_some(), "no {key}: {line}");
        }
        if v["target"] == "access" && v["path"] == "/json-check" {
            access = Some(v);
        }
    }
    let access = access.unwrap_or_else(|| panic!("no access line:\n{log}"));
    assert_eq!(access["status"], 200, "{access}");
    assert_eq!(access["route"], "r", "{access}");
    assert_eq!(access["method"], "GET", "{access}");
    assert!(access["total_ms"].is_number(), "{access}");
    assert!(access["upstream_ms"].is_number(), "{access}");
    // The node that answered, as the upstream's `nodes` key names it.
    assert_eq!(access["upstream"], up.node().as_str(), "{access}");
    assert!(
        access["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{access}"
    );
}

/// Log fields are written for people and log queries, not as Rust debug forms (`Some("alice")`,
/// `["a", "b"]`, `Duration { .. }`): no `?value` / `{:?}` inside a tracing macro in the crates.
#[test]
fn tracing_calls_use_no_debug_formatting() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf();
    let mut offenders = Vec::new();
    for dir in ["gateway/src", "oidc/src", "runtime/src"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read dir") {
                let p = entry.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "rs") {
                    let src = std::fs::read_to_string(&p).expect("read");
                    for call in debug_formatted_tracing_calls(&src) {
                        offenders.push(format!("{}: {call}", p.display()));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "tracing calls with debug formatting:\n{}",
        offenders.join("\n")
    );
}

/// The argument lists of `error!`/`warn!`/`info!`/`debug!`/`trace!` calls that format a value
/// with `Debug`.
fn debug_formatted_tracing_calls(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = src.as_bytes();
    for mac in ["error!(", "warn!(", "info!(", "debug!(", "trace!("] {
        let mut from = 0;
        while let Some(pos) = src[from..].find(mac) {
            let start = from + pos;
            from = start + mac.len();
            // `tracing::info!(` or a bare imported `info!(`, not `eprintln!(` and the like.
            if start > 0 {
                let before = bytes[start - 1];
                if before.is_ascii_alphanumeric() || before == b'_' {
                    continue;
                }
            }
            let mut depth = 1;
            let mut end = from;
            while end < bytes.len() && depth > 0 {
                match bytes[end] {
                    b'(' => depth += 1,
                    b')' => depth -= 1,
                    _ => {}
                }
                end += 1;
            }
            let call = &src[from..end.saturating_sub(1)];
            let flat: String = call.split_whitespace().collect::<Vec<_>>().join(" ");
            let debug_field = flat.contains("= ?")
                || flat.starts_with('?')
                || flat.contains(", ?")
                || flat.contains("(?");
            if debug_field || flat.contains(":?}") || flat.contains(":#?}") {
                out.push(flat);
            }
        }
    }
    out
}

#[test]
fn the_debug_format_scanner_sees_each_form() {
    assert_eq!(
        debug_formatted_tracing_calls(r#"tracing::info!(sub = ?data.sub, "x");"#).len(),
        1
    );
    assert_eq!(
        debug_formatted_tracing_calls(r#"debug!(signal, ?msg, "x");"#).len(),
        1
    );
    assert_eq!(
        debug_formatted_tracing_calls(r#"warn!("got {:?}", v);"#).len(),
        1
    );
    assert_eq!(
        debug_formatted_tracing_calls(r#"warn!("got {v:?}");"#).len(),
        1
    );
    assert!(
        debug_formatted_tracing_calls(r#"info!(sub = data.sub.as_deref(), %e, "ok?");"#).is_empty()
    );
    assert!(debug_formatted_tracing_calls(r#"eprintln!("{:?}", x);"#).is_empty());
}
