//! The etcd provider's thread: a full range read of `<prefix>/`, then a watch from the next
//! revision; every change goes to the control thread as an [`Event`]. A compacted revision, a
//! cancelled or broken watch, or an unreachable etcd fall back to a full re-read, with backoff
//! while etcd does not answer. The shards never see any of this: they get published configs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shardgate_runtime::gate::Shutdown;

use super::client::{Change, Client, EtcdError};
use crate::config::EtcdConf;

/// From the etcd thread to the control thread.
#[derive(Debug)]
pub enum Event {
    /// Everything under the prefix at `revision` (replaces what the control side had).
    Full {
        revision: i64,
        objects: Vec<(String, String)>,
    },
    /// Changes after the last event, up to `revision`.
    Changes { revision: i64, changes: Vec<Change> },
}

/// What `/readyz` and `/metrics` say about etcd.
#[derive(Debug, Default)]
pub struct EtcdStatus {
    inner: Mutex<StatusInner>,
    /// Full reads done (the first one included).
    pub full_reads: AtomicU64,
    /// Re-reads forced by a compacted revision.
    pub compactions: AtomicU64,
}

#[derive(Debug, Default, Clone)]
pub struct StatusInner {
    /// The watch is up (or the last request answered).
    pub connected: bool,
    /// At least one full read was published.
    pub synced: bool,
    /// The newest revision applied.
    pub revision: i64,
    /// Why etcd is not connected, or why its objects did not publish.
    pub error: Option<String>,
    /// Objects skipped in the config being served.
    pub skipped: usize,
}

impl EtcdStatus {
    pub fn get(&self) -> StatusInner {
        match self.inner.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut StatusInner)) {
        match self.inner.lock() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}

/// Runs until `shutdown` (call on its own thread). A lost watch resumes from the last revision
/// delivered (etcd replays what happened meanwhile); when that revision was compacted, or at the
/// start, everything under the prefix is read again.
pub fn run(
    conf: EtcdConf,
    events: flume::Sender<Event>,
    status: std::sync::Arc<EtcdStatus>,
    shutdown: Shutdown,
) {
    let mut client = Client::new(conf.hosts.clone(), conf.timeout, conf.auth.clone());
    let dir = format!("{}/", conf.prefix);
    let mut backoff = Duration::from_millis(100);
    // The newest revision sent to the control thread; None: a full read is needed.
    let mut delivered: Option<i64> = None;
    while !shutdown.is_triggered() {
        let from = match delivered {
            Some(rev) => rev,
            None => match client.range(&dir) {
                Ok((revision, objects)) => {
                    status.full_reads.fetch_add(1, Ordering::Relaxed);
                    status.update(|s| {
                        s.connected = true;
                        s.error = None;
                    });
                    tracing::info!(revision, keys = objects.len(), prefix = %conf.prefix, "etcd: full read");
                    if events.send(Event::Full { revision, objects }).is_err() {
                        return;
                    }
                    delivered = Some(revision);
                    revision
                }
                Err(e) => {
                    fail(&status, &e);
                    sleep(&shutdown, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let mut watch = match client.watch(&dir, from + 1) {
            Ok(w) => w,
            Err(e) => {
                fail(&status, &e);
                sleep(&shutdown, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut up = false;
        while !shutdown.is_triggered() {
            match watch.next_batch() {
                Ok(batch) => {
                    if !up {
                        // The first answer (or a quiet read) on a new watch: etcd is back.
                        up = true;
                        backoff = Duration::from_millis(100);
                        status.update(|s| {
                            if !s.connected {
                                tracing::info!(revision = from, "etcd: watching");
                            }
                            s.connected = true;
                            s.error = None;
                        });
                    }
                    let Some(batch) = batch else { continue };
                    let revision = batch.revision;
                    let event = Event::Changes {
                        revision,
                        changes: batch.changes,
                    };
                    if events.send(event).is_err() {
                        return;
                    }
                    delivered = Some(revision);
                }
                Err(EtcdError::Compacted(rev)) => {
                    status.compactions.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        compact_revision = rev,
                        "etcd: the watched revision was compacted; reading everything again"
                    );
                    delivered = None;
                    break;
                }
                Err(e) => {
                    fail(&status, &e);
                    sleep(&shutdown, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
    }
}

fn fail(status: &EtcdStatus, e: &EtcdError) {
    let message = e.to_string();
    status.update(|s| {
        if s.connected || s.error.as_deref() != Some(message.as_str()) {
            tracing::error!(error = %message, "etcd unreachable; the last good config keeps serving, retrying");
        }
        s.connected = false;
        s.error = Some(message);
    });
}

/// Sleeps up to `d`, waking early on shutdown.
fn sleep(shutdown: &Shutdown, d: Duration) {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() && !shutdown.is_triggered() {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}
