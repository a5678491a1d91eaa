//! Process signals as messages.
//!
//! Call [`block_signals`] first thing in `main`, before any thread exists: threads inherit the
//! mask, so SIGHUP/SIGTERM/SIGINT are never delivered asynchronously to a shard. Then
//! [`spawn_signal_thread`] turns them into [`Signal`] messages with `sigwait`.

use std::io;
use std::thread;

use tracing::{debug, warn};

use crate::error::Error;

/// What a received signal asks the gateway to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload the configuration.
    Reload,
    /// SIGTERM or SIGINT: stop accepting, drain, exit.
    Terminate,
}

const HANDLED: [libc::c_int; 3] = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT];

#[allow(unsafe_code)]
fn handled_set() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    if unsafe { libc::sigemptyset(&mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for signal in HANDLED {
        // SAFETY: as above; `signal` is a valid signal number.
        if unsafe { libc::sigaddset(&mut set, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(set)
}

/// Blocks SIGHUP, SIGTERM and SIGINT in the calling thread (and every thread it spawns later).
#[allow(unsafe_code)]
pub fn block_signals() -> io::Result<()> {
    let set = handled_set().map_err(Error::Signal)?;
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        // pthread_* return the error number instead of setting errno.
        return Err(Error::Signal(io::Error::from_raw_os_error(rc)).into());
    }
    Ok(())
}

/// Starts a thread (`signals`) that waits for the blocked signals and sends them as [`Signal`]s.
/// The signals must be blocked in every thread ([`block_signals`] first in `main`), or the
/// kernel may deliver one to a thread that is not waiting and its default action kills the
/// process. This function also blocks them in the calling thread, which the new thread inherits.
/// The thread exits on the first signal after the receiver is dropped.
pub fn spawn_signal_thread() -> io::Result<flume::Receiver<Signal>> {
    spawn_signal_thread_inner().map(|(rx, _)| rx)
}

fn spawn_signal_thread_inner() -> io::Result<(flume::Receiver<Signal>, thread::JoinHandle<()>)> {
    block_signals()?;
    let set = handled_set().map_err(Error::Signal)?;
    let (tx, rx) = flume::unbounded();
    let handle = thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_loop(set, tx))
        .map_err(Error::Signal)?;
    Ok((rx, handle))
}

fn signal_loop(set: libc::sigset_t, tx: flume::Sender<Signal>) {
    loop {
        let signal = match wait_for(&set) {
            Ok(signal) => signal,
            Err(err) => {
                warn!(error = %err, "sigwait failed; signals are no longer handled");
                return;
            }
        };
        let msg = match signal {
            libc::SIGHUP => Signal::Reload,
            _ => Signal::Terminate,
        };
        debug!(
            signal,
            action = if matches!(msg, Signal::Reload) {
                "reload"
            } else {
                "terminate"
            },
            "signal received"
        );
        if tx.send(msg).is_err() {
            return;
        }
    }
}

#[allow(unsafe_code)]
fn wait_for(set: &libc::sigset_t) -> io::Result<libc::c_int> {
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is an initialised sigset_t and `signal` a valid out pointer.
    let rc = unsafe { libc::sigwait(set, &mut signal) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(signal)
}

#[cfg(test)]
mod tests {
    use std::os::unix::thread::JoinHandleExt;
    use std::time::Duration;

    use super::*;

    #[allow(unsafe_code)]
    fn send_to(handle: &thread::JoinHandle<()>, signal: libc::c_int) {
        // SAFETY: the thread is alive (it loops in sigwait until its receiver is dropped) and
        // has the signal blocked, so the thread-directed signal is consumed by its sigwait and
        // never reaches the test harness's other threads.
        let rc = unsafe { libc::pthread_kill(handle.as_pthread_t(), signal) };
        assert_eq!(rc, 0);
    }

    #[test]
    fn signals_become_messages() {
        let (rx, handle) = spawn_signal_thread_inner().unwrap();
        send_to(&handle, libc::SIGHUP);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(Signal::Reload));
        send_to(&handle, libc::SIGTERM);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(Signal::Terminate)
        );
        send_to(&handle, libc::SIGINT);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(Signal::Terminate)
        );
        // Once the receiver is gone, the next signal ends the thread.
        drop(rx);
        send_to(&handle, libc::SIGHUP);
        handle.join().unwrap();
    }
}
