//! Snapshots: publish from a control thread, swap in on shards under both drivers.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use shardgate_runtime::{DriverChoice, Publisher, run_on_current_thread};

const DRIVERS: [DriverChoice; 2] = [DriverChoice::Uring, DriverChoice::Epoll];
const LONG: Duration = Duration::from_secs(10);

#[test]
fn a_shard_sees_the_latest_of_many_versions() {
    for driver in DRIVERS {
        let publisher = Arc::new(Publisher::new(Arc::new(0u64)));
        let subscription = publisher.subscribe();
        assert_eq!(subscription.version(), 0);
        let (attached_tx, attached_rx) = flume::bounded::<()>(1);

        let control = {
            let publisher = Arc::clone(&publisher);
            thread::spawn(move || {
                attached_rx.recv().unwrap();
                let mut last = 0;
                for n in 1..=100u64 {
                    last = publisher.publish(Arc::new(n * 10));
                }
                last
            })
        };

        let (version, value) = run_on_current_thread(driver, |_| async move {
            let local = subscription.attach();
            assert_eq!(**local.load(), 0);
            attached_tx.send(()).unwrap();
            // Intermediate versions may be skipped; the last one must arrive.
            let mut seen = local.version();
            let wait = async {
                while seen < 100 {
                    seen = local.changed(seen).await.unwrap();
                }
            };
            monoio::time::timeout(LONG, wait).await.unwrap();
            (local.version(), **local.load())
        })
        .unwrap();

        assert_eq!(control.join().unwrap(), 100);
        assert_eq!((version, value), (100, 1000), "{driver:?}");
        assert_eq!(*publisher.current(), 1000);
        assert_eq!(publisher.version(), 100);
    }
}

struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_held_load_keeps_the_old_value_alive() {
    for driver in DRIVERS {
        let drops = Arc::new(AtomicUsize::new(0));
        let publisher = Arc::new(Publisher::new(Arc::new(Tracked(Arc::clone(&drops)))));
        let subscription = publisher.subscribe();
        let drops_seen = Arc::clone(&drops);
        let pub_for_shard = Arc::clone(&publisher);

        run_on_current_thread(driver, |_| async move {
            let local = subscription.attach();
            let held = local.load();
            let v0 = Arc::as_ptr(&held);

            // Publish from another thread, as the config actor does.
            let next = Tracked(Arc::clone(&drops_seen));
            thread::spawn(move || {
                pub_for_shard.publish(Arc::new(next));
            })
            .join()
            .unwrap();
            let v = monoio::time::timeout(LONG, local.changed(0)).await.unwrap();
            assert_eq!(v, Some(1));
            assert_ne!(Arc::as_ptr(&local.load()), v0);

            // Our request still holds version 0, so it is alive and unchanged.
            assert_eq!(Arc::as_ptr(&held), v0);
            assert_eq!(drops_seen.load(Ordering::SeqCst), 0);
            drop(held);
            assert_eq!(drops_seen.load(Ordering::SeqCst), 1);
        })
        .unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1, "{driver:?}");
    }
}

#[test]
fn publish_before_attach_is_not_lost_and_dead_subscribers_are_pruned() {
    for driver in DRIVERS {
        let publisher = Publisher::new(Arc::new("v0"));
        let subscription = publisher.subscribe();
        publisher.publish(Arc::new("v1"));
        assert_eq!(publisher.subscribers(), 1);

        let subscription_2 = publisher.subscribe();
        assert_eq!(subscription_2.version(), 1);

        let got = run_on_current_thread(driver, |_| async move {
            let local = subscription.attach();
            let local_2 = subscription_2.attach();
            (local.version(), **local.load(), local_2.version())
        })
        .unwrap();
        assert_eq!(got, (1, "v1", 1), "{driver:?}");

        // Both shard runtimes are gone, so their swapper tasks (and receivers) were dropped.
        publisher.publish(Arc::new("v2"));
        assert_eq!(publisher.subscribers(), 0, "{driver:?}");
    }
}

#[test]
fn changed_reports_a_gone_publisher() {
    for driver in DRIVERS {
        let publisher = Publisher::new(Arc::new(1u8));
        let subscription = publisher.subscribe();
        let got = run_on_current_thread(driver, |_| async move {
            let local = subscription.attach();
            let dropper = thread::spawn(move || drop(publisher));
            let end = monoio::time::timeout(LONG, local.changed(0)).await;
            dropper.join().unwrap();
            (end, **local.load())
        })
        .unwrap();
        assert_eq!(got, (Ok(None), 1), "{driver:?}");
    }
}

#[test]
fn clones_of_local_share_the_value() {
    let publisher = Arc::new(Publisher::new(Arc::new(String::from("a"))));
    let subscription = publisher.subscribe();
    let control = Arc::clone(&publisher);
    run_on_current_thread(DriverChoice::Epoll, |_| async move {
        let local = subscription.attach();
        let other = local.clone();
        thread::spawn(move || control.publish(Arc::new(String::from("b"))))
            .join()
            .unwrap();
        monoio::time::timeout(LONG, local.changed(0)).await.unwrap();
        assert_eq!(other.version(), 1);
        assert_eq!(other.load().as_str(), "b");
    })
    .unwrap();
}
