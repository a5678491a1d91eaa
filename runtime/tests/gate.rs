//! Shutdown and the in-flight gate, under both drivers.
#![allow(clippy::unwrap_used)]

use std::thread;
use std::time::Duration;

use shardgate_runtime::{DriverChoice, Gate, Shutdown, run_on_current_thread};

const DRIVERS: [DriverChoice; 2] = [DriverChoice::Uring, DriverChoice::Epoll];
const LONG: Duration = Duration::from_secs(10);

#[test]
fn gate_counts_refuses_after_close_and_drains() {
    for driver in DRIVERS {
        run_on_current_thread(driver, |_| async {
            let gate = Gate::new();
            let a = gate.enter().unwrap();
            let b = gate.enter().unwrap();
            assert_eq!(gate.in_flight(), 2);

            gate.close();
            assert!(gate.is_closed());
            assert!(gate.enter().is_none());
            assert_eq!(gate.in_flight(), 2);

            // Work still inside: a short drain gives up.
            assert!(!gate.drained(Duration::from_millis(20)).await);

            // The work finishes later on this shard; the drain sees it.
            monoio::spawn(async move {
                monoio::time::sleep(Duration::from_millis(5)).await;
                drop(a);
                monoio::time::sleep(Duration::from_millis(5)).await;
                drop(b);
            });
            assert!(gate.drained(LONG).await);
            assert_eq!(gate.in_flight(), 0);
            // Already drained: immediate.
            assert!(gate.drained(Duration::ZERO).await);
        })
        .unwrap();
    }
}

/// `expire` wakes work that would never end on its own (a tunnel), which then leaves the gate.
#[test]
fn expire_wakes_long_lived_work() {
    for driver in DRIVERS {
        run_on_current_thread(driver, |_| async {
            let gate = Gate::new();
            let guard = gate.enter().unwrap();
            let g = gate.clone();
            let tunnel = monoio::spawn(async move {
                let _guard = guard;
                g.expired().await;
            });
            gate.close();
            assert!(!gate.is_expired());
            assert!(!gate.drained(Duration::from_millis(20)).await);
            gate.expire();
            assert!(gate.is_expired());
            assert!(gate.drained(LONG).await);
            tunnel.await;
            // Already expired: immediate.
            gate.expired().await;
        })
        .unwrap();
    }
}

#[test]
fn shutdown_wakes_a_shard_task_from_another_thread() {
    for driver in DRIVERS {
        let shutdown = Shutdown::new();
        let (waiting_tx, waiting_rx) = flume::bounded::<()>(1);
        let trigger = {
            let shutdown = shutdown.clone();
            thread::spawn(move || {
                waiting_rx.recv().unwrap();
                shutdown.trigger();
            })
        };
        let woke = run_on_current_thread(driver, |_| {
            let shutdown = shutdown.clone();
            async move {
                assert!(!shutdown.is_triggered());
                let task = monoio::spawn({
                    let shutdown = shutdown.clone();
                    async move { monoio::time::timeout(LONG, shutdown.wait()).await.is_ok() }
                });
                waiting_tx.send(()).unwrap();
                task.await
            }
        })
        .unwrap();
        trigger.join().unwrap();
        assert!(woke, "{driver:?}");
        assert!(shutdown.is_triggered());
        // Later waiters return at once, in a shard or on a plain thread.
        shutdown.wait_blocking();
        shutdown.trigger();
    }
}

#[test]
fn shutdown_reaches_every_shard() {
    let shutdown = Shutdown::new();
    let (tx, rx) = flume::unbounded();
    let set = {
        let shutdown = shutdown.clone();
        shardgate_runtime::ShardSet::spawn(2, DriverChoice::Auto, false, move |info| {
            let shutdown = shutdown.clone();
            let tx = tx.clone();
            async move {
                tx.send(()).unwrap();
                shutdown.wait().await;
                assert!(shutdown.is_triggered(), "shard {}", info.id);
            }
        })
        .unwrap()
    };
    rx.recv_timeout(LONG).unwrap();
    rx.recv_timeout(LONG).unwrap();
    shutdown.trigger();
    set.join();
}
