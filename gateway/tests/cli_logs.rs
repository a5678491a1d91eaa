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
