//! Actors: bounded mailboxes with addresses usable from any thread.
//!
//! An actor is whatever loop owns a [`Mailbox`]: a task on a shard or a plain control thread.
//! [`Addr`] is `Clone + Send + Sync`; `tell` never blocks (a full or closed mailbox hands the
//! message back), `ask` awaits a [`Reply`] with a deadline so a shard keeps serving everything
//! else meanwhile. Receiving inside a monoio runtime parks the task, not the thread: a send from
//! another thread wakes it through monoio's `sync` waker queue (no busy polling).

use std::fmt;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
pub use crate::error::AskError;

/// Creates a bounded mailbox holding at most `capacity` queued messages (at least 1).
pub fn mailbox<M: Send>(capacity: usize) -> (Addr<M>, Mailbox<M>) {
    let (tx, rx) = flume::bounded(capacity.max(1));
    (Addr { tx }, Mailbox { rx })
}

/// The sending side of a mailbox.
pub struct Addr<M> {
    tx: flume::Sender<M>,
}

impl<M> Clone for Addr<M> {
    fn clone(&self) -> Self {
        Addr {
            tx: self.tx.clone(),
        }
    }
}

impl<M> fmt::Debug for Addr<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Addr")
            .field("queued", &self.tx.len())
            .field("closed", &self.tx.is_disconnected())
            .finish()
    }
}

/// Why `tell` handed a message back.
pub enum Closed<M> {
    /// The mailbox is at capacity (the actor is behind); retry later or shed the work.
    Full(M),
    /// The actor stopped: every `Mailbox` was dropped.
    Stopped(M),
}

impl<M> Closed<M> {
    /// The message that was not delivered.
    pub fn into_inner(self) -> M {
        match self {
            Closed::Full(msg) | Closed::Stopped(msg) => msg,
        }
    }

    pub fn is_full(&self) -> bool {
        matches!(self, Closed::Full(_))
    }
}

impl<M> fmt::Debug for Closed<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Closed::Full(_) => "Closed::Full(..)",
            Closed::Stopped(_) => "Closed::Stopped(..)",
        })
    }
}

impl<M> fmt::Display for Closed<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Closed::Full(_) => "actor mailbox is full",
            Closed::Stopped(_) => "actor stopped: its mailbox is closed",
        })
    }
}

impl<M> std::error::Error for Closed<M> {}

impl<M: Send> Addr<M> {
    /// Queues `msg` without waiting.
    pub fn tell(&self, msg: M) -> Result<(), Closed<M>> {
        self.tx.try_send(msg).map_err(|err| match err {
            flume::TrySendError::Full(msg) => Closed::Full(msg),
            flume::TrySendError::Disconnected(msg) => Closed::Stopped(msg),
        })
    }

    /// Sends the request built by `make` and awaits the actor's answer, all within `timeout`
    /// (a full mailbox is waited on, not failed, inside that budget). Must run inside a monoio
    /// runtime with the timer enabled (every shard); plain threads use [`ask_blocking`].
    ///
    /// [`ask_blocking`]: Self::ask_blocking
    pub async fn ask<R: Send>(
        &self,
        make: impl FnOnce(Reply<R>) -> M,
        timeout: Duration,
    ) -> Result<R, AskError> {
        let (reply, answer) = reply_pair();
        let msg = make(reply);
        let roundtrip = async {
            self.tx
                .send_async(msg)
                .await
                .map_err(|_| AskError::Closed)?;
            answer.recv_async().await.map_err(|_| AskError::Dropped)
        };
        match monoio::time::timeout(timeout, roundtrip).await {
            Ok(result) => result,
            Err(_) => Err(AskError::Timeout),
        }
    }

    /// `ask` for plain (non-runtime) threads: blocks the calling thread up to `timeout`.
    pub fn ask_blocking<R: Send>(
        &self,
        make: impl FnOnce(Reply<R>) -> M,
        timeout: Duration,
    ) -> Result<R, AskError> {
        let deadline = SystemClock.monotonic() + timeout;
        let (reply, answer) = reply_pair();
        self.tx
            .send_deadline(make(reply), deadline)
            .map_err(|err| match err {
                flume::SendTimeoutError::Timeout(_) => AskError::Timeout,
                flume::SendTimeoutError::Disconnected(_) => AskError::Closed,
            })?;
        answer.recv_deadline(deadline).map_err(|err| match err {
            flume::RecvTimeoutError::Timeout => AskError::Timeout,
            flume::RecvTimeoutError::Disconnected => AskError::Dropped,
        })
    }

    /// True once every `Mailbox` was dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_disconnected()
    }

    /// Messages currently queued.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

fn reply_pair<R>() -> (Reply<R>, flume::Receiver<R>) {
    let (tx, rx) = flume::bounded(1);
    (Reply { tx }, rx)
}

/// The answer slot of one `ask`. Dropping it unanswered makes the asker see
/// [`AskError::Dropped`] at once instead of waiting for its timeout.
pub struct Reply<R> {
    tx: flume::Sender<R>,
}

impl<R> Reply<R> {
    /// Answers the asker; an asker that gave up (timed out, dropped) is ignored.
    pub fn send(self, value: R) {
        // Capacity 1 and `self` is consumed, so the only failure is a gone asker.
        let _ = self.tx.try_send(value);
    }

    /// True if the asker is gone and answering would be wasted work.
    pub fn is_abandoned(&self) -> bool {
        self.tx.is_disconnected()
    }
}

impl<R> fmt::Debug for Reply<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("abandoned", &self.is_abandoned())
            .finish()
    }
}

/// The receiving side of a mailbox, owned by the actor.
pub struct Mailbox<M> {
    rx: flume::Receiver<M>,
}

impl<M> Mailbox<M> {
    /// The next message, or `None` once every `Addr` was dropped and the queue is empty.
    /// Works in any async context (a shard task, or another executor).
    pub async fn recv(&self) -> Option<M> {
        self.rx.recv_async().await.ok()
    }

    /// The next message if one is queued now.
    pub fn try_recv(&self) -> Option<M> {
        self.rx.try_recv().ok()
    }

    /// Blocking `recv`, for actors on plain threads.
    pub fn recv_blocking(&self) -> Option<M> {
        self.rx.recv().ok()
    }

    /// Blocking `recv` with a bound, for actor loops that also do periodic work (refresh timers):
    /// `Err(AskError::Timeout)` when nothing arrived in time, `Err(AskError::Closed)` when every
    /// `Addr` is gone.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<M, AskError> {
        self.rx.recv_timeout(timeout).map_err(|err| match err {
            flume::RecvTimeoutError::Timeout => AskError::Timeout,
            flume::RecvTimeoutError::Disconnected => AskError::Closed,
        })
    }

    /// Messages currently queued.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl<M> fmt::Debug for Mailbox<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("queued", &self.rx.len())
            .finish()
    }
}
