//! The production failure `Auto` exists for: a non-root process whose RLIMIT_MEMLOCK is too small
//! for the io_uring ring (monoio's FusionDriver panics here). Run for real in a child process:
//! this test re-executes its own binary with a 64 KiB memlock limit and, when running as root
//! (root's CAP_IPC_LOCK bypasses the limit), as the `nobody` user. Only the child is affected.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use shardgate_runtime::{ActiveDriver, DriverChoice, Error, run_on_current_thread};

const CHILD_ENV: &str = "SHARDGATE_RUNTIME_MEMLOCK_CHILD";
const NOBODY: libc::uid_t = 65534;

#[test]
fn auto_falls_back_to_epoll_under_a_tiny_memlock_limit() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child();
    }
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "auto_falls_back_to_epoll_under_a_tiny_memlock_limit",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1");
    restrict_child(&mut cmd);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("CHILD-OK"), "child did not run:\n{stdout}");
    // The operator is told what happened and what to change.
    assert!(stdout.contains("falling back to epoll"), "{stdout}");
    assert!(stdout.contains("LimitMEMLOCK"), "{stdout}");
}

#[allow(unsafe_code)]
fn restrict_child(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe syscalls
    // (setrlimit, setgroups, setgid, setuid, geteuid) on plain stack values; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::geteuid() == 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(NOBODY) != 0
                    || libc::setuid(NOBODY) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn child() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .init();

    let got = run_on_current_thread(DriverChoice::Auto, |driver| async move {
        monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        driver
    })
    .unwrap();
    assert_eq!(got, ActiveDriver::Epoll);

    let err = run_on_current_thread(DriverChoice::Uring, |d| async move { d })
        .err()
        .unwrap();
    match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::Driver { driver, source }) => {
            assert_eq!(*driver, ActiveDriver::Uring);
            assert_eq!(source.raw_os_error(), Some(libc::ENOMEM));
        }
        other => panic!("unexpected {other:?}"),
    }
    println!("CHILD-OK");
}
