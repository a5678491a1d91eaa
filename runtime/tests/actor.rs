//! Mailboxes and addresses: delivery, ordering, closing, and ask under both drivers.
#![allow(clippy::unwrap_used)]

use std::thread;
use std::time::Duration;

use shardgate_runtime::{AskError, Closed, DriverChoice, Reply, mailbox, run_on_current_thread};

const DRIVERS: [DriverChoice; 2] = [DriverChoice::Uring, DriverChoice::Epoll];
const LONG: Duration = Duration::from_secs(10);

#[test]
fn single_producer_order_is_kept_across_threads() {
    for driver in DRIVERS {
        let (addr, mailbox) = mailbox::<u32>(8);
        let producer = thread::spawn(move || {
            for i in 0..500 {
                // A small mailbox makes the producer hit Full and retry, exercising back-pressure.
                let mut msg = i;
                for _ in 0..100_000 {
                    match addr.tell(msg) {
                        Ok(()) => break,
                        Err(Closed::Full(m)) => {
                            msg = m;
                            thread::yield_now();
                        }
                        Err(Closed::Stopped(_)) => panic!("mailbox closed early"),
                    }
                }
            }
        });
        let got = run_on_current_thread(driver, |_| async move {
            let mut got = Vec::new();
            while let Some(i) = mailbox.recv().await {
                got.push(i);
            }
            got
        })
        .unwrap();
        producer.join().unwrap();
        assert_eq!(got, (0..500).collect::<Vec<_>>(), "{driver:?}");
    }
}

#[test]
fn many_producers_on_many_threads_all_deliver() {
    for driver in DRIVERS {
        let (addr, mailbox) = mailbox::<(usize, u32)>(1024);
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let addr = addr.clone();
                thread::spawn(move || {
                    for i in 0..200 {
                        let mut msg = (p, i);
                        for _ in 0..100_000 {
                            match addr.tell(msg) {
                                Ok(()) => break,
                                Err(e) if e.is_full() => {
                                    msg = e.into_inner();
                                    thread::yield_now();
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        drop(addr);
        let per_producer = run_on_current_thread(driver, |_| async move {
            let mut seen: Vec<Vec<u32>> = vec![Vec::new(); 4];
            while let Some((p, i)) = mailbox.recv().await {
                seen[p].push(i);
            }
            seen
        })
        .unwrap();
        for producer in producers {
            producer.join().unwrap();
        }
        // Every message arrives, and each producer's own order is kept.
        for seen in per_producer {
            assert_eq!(seen, (0..200).collect::<Vec<_>>(), "{driver:?}");
        }
    }
}

#[test]
fn tell_hands_the_message_back_when_full_or_stopped() {
    let (addr, mailbox) = mailbox::<String>(1);
    addr.tell("first".into()).unwrap();
    match addr.tell("second".into()) {
        Err(Closed::Full(m)) => assert_eq!(m, "second"),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(mailbox.try_recv().as_deref(), Some("first"));
    assert_eq!(mailbox.try_recv(), None);
    drop(mailbox);
    assert!(addr.is_closed());
    match addr.tell("third".into()) {
        Err(Closed::Stopped(m)) => assert_eq!(m, "third"),
        other => panic!("expected Stopped, got {other:?}"),
    }
}

#[test]
fn recv_returns_none_after_every_addr_dropped_and_queue_drained() {
    for driver in DRIVERS {
        let (addr, mailbox) = mailbox::<u8>(4);
        let second = addr.clone();
        addr.tell(1).unwrap();
        second.tell(2).unwrap();
        let dropper = thread::spawn(move || {
            drop(addr);
            drop(second);
        });
        let got = run_on_current_thread(driver, |_| async move {
            let a = mailbox.recv().await;
            let b = mailbox.recv().await;
            let end = mailbox.recv().await;
            (a, b, end)
        })
        .unwrap();
        dropper.join().unwrap();
        assert_eq!(got, (Some(1), Some(2), None), "{driver:?}");
    }
}

enum Req {
    Double(u64, Reply<u64>),
    Ignore(Reply<u64>),
    Forget(Reply<u64>),
}

/// An actor on a plain thread: doubles, holds the reply forever, or drops it.
fn spawn_actor() -> (shardgate_runtime::Addr<Req>, thread::JoinHandle<()>) {
    let (addr, mailbox) = mailbox::<Req>(16);
    let handle = thread::spawn(move || {
        let mut held = Vec::new();
        while let Some(req) = mailbox.recv_blocking() {
            match req {
                Req::Double(n, reply) => reply.send(n * 2),
                Req::Ignore(reply) => held.push(reply),
                Req::Forget(reply) => drop(reply),
            }
        }
    });
    (addr, handle)
}

#[test]
fn ask_roundtrip_timeout_and_dropped_from_a_shard() {
    for driver in DRIVERS {
        let (addr, actor) = spawn_actor();
        let asker = addr.clone();
        let results = run_on_current_thread(driver, |_| async move {
            let mut answers = Vec::new();
            for n in 0..20 {
                answers.push(asker.ask(|r| Req::Double(n, r), LONG).await);
            }
            let timeout = asker.ask(Req::Ignore, Duration::from_millis(30)).await;
            let dropped = asker.ask(Req::Forget, LONG).await;
            (answers, timeout, dropped)
        })
        .unwrap();
        let (answers, timeout, dropped) = results;
        assert_eq!(
            answers,
            (0..20).map(|n| Ok(n * 2)).collect::<Vec<_>>(),
            "{driver:?}"
        );
        assert_eq!(timeout, Err(AskError::Timeout), "{driver:?}");
        assert_eq!(dropped, Err(AskError::Dropped), "{driver:?}");
        drop(addr);
        actor.join().unwrap();
    }
}

#[test]
fn ask_a_stopped_actor_is_closed() {
    for driver in DRIVERS {
        let (addr, mailbox) = mailbox::<Req>(4);
        drop(mailbox);
        let got = run_on_current_thread(driver, |_| async move {
            addr.ask(|r| Req::Double(1, r), LONG).await
        })
        .unwrap();
        assert_eq!(got, Err(AskError::Closed), "{driver:?}");
    }
}

#[test]
fn ask_blocking_from_a_plain_thread() {
    let (addr, actor) = spawn_actor();
    assert_eq!(addr.ask_blocking(|r| Req::Double(21, r), LONG), Ok(42));
    assert_eq!(
        addr.ask_blocking(Req::Ignore, Duration::from_millis(20)),
        Err(AskError::Timeout)
    );
    assert_eq!(addr.ask_blocking(Req::Forget, LONG), Err(AskError::Dropped));
    drop(addr);
    actor.join().unwrap();
}

#[test]
fn an_actor_can_live_on_a_shard_and_answer_another_thread() {
    for driver in DRIVERS {
        let (addr, mailbox) = mailbox::<Req>(4);
        let shard = thread::spawn(move || {
            run_on_current_thread(driver, |_| async move {
                while let Some(req) = mailbox.recv().await {
                    if let Req::Double(n, reply) = req {
                        reply.send(n * 2);
                    }
                }
            })
            .unwrap();
        });
        for n in 0..10 {
            assert_eq!(addr.ask_blocking(|r| Req::Double(n, r), LONG), Ok(n * 2));
        }
        drop(addr);
        shard.join().unwrap();
    }
}
