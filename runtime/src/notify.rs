//! A shard-local "wake everyone" primitive (`!Send`, no atomics).
//!
//! Used by [`Gate`](crate::gate::Gate) (drained) and [`Local`](crate::snapshot::Local)
//! (changed). Waiters are woken by generation: a `Notified` future completes once the generation
//! it was created at has moved on, so a notify between creation and first poll is never lost.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub(crate) struct LocalNotify {
    generation: Cell<u64>,
    // A slot per pending waiter; `None` once a waiter was dropped. Cleared on every notify, so
    // it only holds waiters of the current generation.
    waiters: RefCell<Vec<Option<Waker>>>,
}

impl LocalNotify {
    pub(crate) fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            generation: self.generation.get(),
            slot: None,
        }
    }

    pub(crate) fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        // Take the list before waking: a woken waker may re-enter (register again) on this shard.
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters.into_iter().flatten() {
            waker.wake();
        }
    }
}

pub(crate) struct Notified<'a> {
    notify: &'a LocalNotify,
    generation: u64,
    slot: Option<usize>,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            self.slot = None;
            return Poll::Ready(());
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        match self.slot {
            Some(i) => match waiters.get_mut(i) {
                Some(Some(w)) if w.will_wake(cx.waker()) => {}
                Some(entry) => *entry = Some(cx.waker().clone()),
                // Unreachable while the generation is unchanged; re-register to stay correct.
                None => {
                    waiters.push(Some(cx.waker().clone()));
                    let i = waiters.len() - 1;
                    drop(waiters);
                    self.slot = Some(i);
                }
            },
            None => {
                waiters.push(Some(cx.waker().clone()));
                let i = waiters.len() - 1;
                drop(waiters);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        let Some(i) = self.slot else { return };
        if self.notify.generation.get() != self.generation {
            return;
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        if let Some(entry) = waiters.get_mut(i) {
            *entry = None;
        }
        // Keep the list from growing with cancelled waiters (timeouts) between notifies.
        while matches!(waiters.last(), Some(None)) {
            waiters.pop();
        }
    }
}
