//! Buffer plumbing over monoio's ownership-passing I/O, and the per-connection I/O deadline.
//!
//! monoio's `read` writes at the start of the buffer it is given, so appending needs a `slice_mut`
//! past the data already held; these helpers keep that in one place.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Sleep;

/// One timer per connection, re-armed for each read or write.
///
/// monoio's `Sleep` is 640 bytes (its wheel entry is cache-padded). With `timeout_at` every I/O
/// step built one, registered and deregistered it in the wheel, and moved it inside a ~1 KiB
/// future several times; this timer cut a plain proxied request by ~7% of its user-space
/// instructions (callgrind, README "Performance"). Re-arming one
/// boxed `Sleep` to a later deadline only raises its expiry (`extend_expiration`): the wheel entry
/// stays put and, should it come due first, the driver re-files it instead of firing. An earlier
/// deadline re-registers it. Steps on one connection never overlap, so one timer serves them all.
pub struct Timer(Pin<Box<Sleep>>);

impl Timer {
    /// Binds to the current runtime's timer driver, so it is built on the thread that uses it.
    pub fn on_shard() -> Self {
        // Not armed until the first `until(..).run(..)`: creating a Sleep registers nothing.
        Timer(Box::pin(monoio::time::sleep(Duration::from_secs(3600))))
    }

    /// A deadline for the next I/O step.
    pub fn until(&mut self, at: Instant) -> Deadline<'_> {
        Deadline { timer: self, at }
    }
}

/// The connection's timer armed for one step; see [`Timer`].
pub struct Deadline<'t> {
    timer: &'t mut Timer,
    at: Instant,
}

impl Deadline<'_> {
    /// Polls `fut` until it completes (`Some`) or the deadline passes first (`None`, and `fut` is
    /// dropped, which cancels the operation).
    pub async fn run<F: Future>(self, fut: F) -> Option<F::Output> {
        let sleep = &mut self.timer.0;
        sleep.as_mut().reset(self.at.into());
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

/// Why a bounded read did not produce bytes.
#[derive(Debug)]
pub enum ReadFail {
    Eof,
    Timeout,
    Io(io::Error),
}

/// Appends at least one byte to `buf` (growing it by up to `chunk`), or fails.
/// The buffer comes back in every case except a timeout, where the cancelled read keeps it:
/// the caller then closes the connection anyway and starts over with an empty buffer.
pub async fn read_more<S: AsyncReadRent>(
    stream: &mut S,
    mut buf: Vec<u8>,
    chunk: usize,
    deadline: Option<Deadline<'_>>,
) -> (Result<usize, ReadFail>, Vec<u8>) {
    if buf.capacity() - buf.len() < chunk / 2 {
        buf.reserve(chunk);
    }
    let len = buf.len();
    let fut = stream.read(buf.slice_mut(len..));
    let (res, slice) = match deadline {
        None => fut.await,
        Some(d) => match d.run(fut).await {
            Some(r) => r,
            None => return (Err(ReadFail::Timeout), Vec::new()),
        },
    };
    let buf = slice.into_inner();
    match res {
        Ok(0) => (Err(ReadFail::Eof), buf),
        Ok(n) => (Ok(n), buf),
        Err(e) => (Err(ReadFail::Io(e)), buf),
    }
}

/// Writes `buf[range]` completely. Returns the buffer.
pub async fn write_range<S: AsyncWriteRent>(
    stream: &mut S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    deadline: Option<Deadline<'_>>,
) -> (Result<(), WriteFail>, Vec<u8>) {
    if start >= end {
        return (Ok(()), buf);
    }
    let fut = stream.write_all(buf.slice(start..end));
    let (res, slice) = match deadline {
        None => fut.await,
        Some(d) => match d.run(fut).await {
            Some(r) => r,
            None => return (Err(WriteFail::Timeout), Vec::new()),
        },
    };
    let buf = slice.into_inner();
    match res {
        Ok(_) => (Ok(()), buf),
        Err(e) => (Err(WriteFail::Io(e)), buf),
    }
}

/// Writes all of `buf`.
pub async fn write_all_vec<S: AsyncWriteRent>(
    stream: &mut S,
    buf: Vec<u8>,
    deadline: Option<Deadline<'_>>,
) -> (Result<(), WriteFail>, Vec<u8>) {
    let end = buf.len();
    write_range(stream, buf, 0, end, deadline).await
}

#[derive(Debug)]
pub enum WriteFail {
    Timeout,
    Io(io::Error),
}

impl std::fmt::Display for WriteFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteFail::Timeout => f.write_str("write timed out"),
            WriteFail::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Unused-capacity check used by callers that must keep the buffer bounded.
pub fn spare(buf: &mut Vec<u8>) -> usize {
    buf.bytes_total() - buf.bytes_init()
}

#[cfg(test)]
mod tests {
    use std::future::pending;
    use std::time::Duration;

    use shardgate_runtime::clock::{Stopwatch, monotonic_now};

    use super::Timer;

    fn on_runtime(f: impl std::future::Future<Output = ()>) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(f);
    }

    /// Runs a step that never finishes with a deadline `ms` from now; asserts it timed out and
    /// returns how long that took.
    async fn time_out_after(t: &mut Timer, ms: u64) -> Duration {
        let start = Stopwatch::start();
        let r = t
            .until(start.started() + Duration::from_millis(ms))
            .run(pending::<()>())
            .await;
        assert_eq!(r, None);
        start.elapsed()
    }

    #[test]
    fn a_step_that_never_finishes_times_out_at_its_deadline() {
        on_runtime(async {
            let mut t = Timer::on_shard();
            assert!(time_out_after(&mut t, 50).await >= Duration::from_millis(45));
        });
    }

    #[test]
    fn a_finished_step_returns_its_output() {
        on_runtime(async {
            let mut t = Timer::on_shard();
            let r = t
                .until(monotonic_now() + Duration::from_secs(5))
                .run(async { 7 })
                .await;
            assert_eq!(r, Some(7));
        });
    }

    #[test]
    fn an_earlier_deadline_after_a_later_one_still_fires() {
        on_runtime(async {
            let mut t = Timer::on_shard();
            let far = monotonic_now() + Duration::from_secs(30);
            assert_eq!(t.until(far).run(async {}).await, Some(()));
            let took = time_out_after(&mut t, 40).await;
            assert!(took < Duration::from_secs(10), "fired at the old deadline");
        });
    }

    #[test]
    fn a_later_deadline_is_not_cut_short_by_the_earlier_registration() {
        on_runtime(async {
            let mut t = Timer::on_shard();
            // Registers the wheel entry at +30 ms, then completes well before it.
            let first = monotonic_now() + Duration::from_millis(30);
            assert_eq!(t.until(first).run(async {}).await, Some(()));
            // Extends the expiry in place; the entry coming due at +30 ms must be re-filed.
            assert!(time_out_after(&mut t, 150).await >= Duration::from_millis(140));
        });
    }

    #[test]
    fn a_fired_timer_can_be_armed_again() {
        on_runtime(async {
            let mut t = Timer::on_shard();
            for _ in 0..3 {
                assert!(time_out_after(&mut t, 20).await >= Duration::from_millis(15));
            }
            // Expired while idle, then armed for a step that finishes in time.
            monoio::time::sleep(Duration::from_millis(30)).await;
            let r = t
                .until(monotonic_now() + Duration::from_secs(5))
                .run(async { 1 })
                .await;
            assert_eq!(r, Some(1));
        });
    }
}
