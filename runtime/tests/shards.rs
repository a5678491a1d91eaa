//! Shard sets, SO_REUSEPORT listeners, driver fallback and the shard clock, under both drivers.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use shardgate_runtime::{
    ActiveDriver, Clock, DriverChoice, Error, ShardSet, Shutdown, bind_reuseport,
    run_on_current_thread, run_on_current_thread_with, shard_clock, tune_stream,
};

const LONG: Duration = Duration::from_secs(10);

async fn echo(mut stream: monoio::net::TcpStream) {
    tune_stream(&stream).unwrap();
    let mut buf = vec![0u8; 256];
    // Bounded by the client: it sends one message per connection, then closes.
    loop {
        let (res, b) = stream.read(buf).await;
        buf = b;
        let n = match res {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (res, b) = stream.write_all(buf[..n].to_vec()).await;
        drop(b);
        if res.is_err() {
            return;
        }
    }
}

fn two_shard_echo(choice: DriverChoice) {
    let shutdown = Shutdown::new();
    // Shard 0 binds port 0 and hands the port to shard 1, so both share one real port with no
    // guessing; each then reports ready.
    let (port_tx, port_rx) = flume::bounded::<u16>(1);
    let (ready_tx, ready_rx) = flume::unbounded::<SocketAddr>();
    let accepted: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);

    let set = {
        let shutdown = shutdown.clone();
        let accepted = Arc::clone(&accepted);
        ShardSet::spawn(2, choice, true, move |info| {
            let shutdown = shutdown.clone();
            let port_tx = port_tx.clone();
            let port_rx = port_rx.clone();
            let ready_tx = ready_tx.clone();
            let accepted = Arc::clone(&accepted);
            async move {
                assert_eq!(info.count, 2);
                let port = if info.id == 0 {
                    0
                } else {
                    port_rx.recv_async().await.unwrap()
                };
                let listener = bind_reuseport(([127, 0, 0, 1], port).into(), 128).unwrap();
                let local = listener.local_addr().unwrap();
                if info.id == 0 {
                    port_tx.send(local.port()).unwrap();
                }
                ready_tx.send(local).unwrap();
                loop {
                    monoio::select! {
                        _ = shutdown.wait() => break,
                        conn = listener.accept() => {
                            let (stream, _) = conn.unwrap();
                            accepted[info.id].fetch_add(1, Ordering::Relaxed);
                            monoio::spawn(echo(stream));
                        }
                    }
                }
            }
        })
        .unwrap()
    };
    let expected = match choice {
        DriverChoice::Epoll => ActiveDriver::Epoll,
        _ => ActiveDriver::Uring,
    };
    assert_eq!(set.drivers(), vec![expected; 2]);

    let a = ready_rx.recv_timeout(LONG).unwrap();
    let b = ready_rx.recv_timeout(LONG).unwrap();
    assert_eq!(a, b, "both shards listen on the same address");

    for i in 0..64 {
        let mut client = TcpStream::connect(a).unwrap();
        client.set_read_timeout(Some(LONG)).unwrap();
        let msg = format!("ping {i}");
        client.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, msg.as_bytes(), "{choice:?}");
    }

    shutdown.trigger();
    set.join();
    let per_shard = [
        accepted[0].load(Ordering::Relaxed),
        accepted[1].load(Ordering::Relaxed),
    ];
    assert_eq!(per_shard[0] + per_shard[1], 64);
    // SO_REUSEPORT hashes the 4-tuple: 64 connections from distinct ports all landing on one
    // listener has probability 2^-63.
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "{choice:?}: {per_shard:?}"
    );
}

#[test]
fn two_reuseport_shards_echo_on_uring() {
    two_shard_echo(DriverChoice::Uring);
}

#[test]
fn two_reuseport_shards_echo_on_epoll() {
    two_shard_echo(DriverChoice::Epoll);
}

#[test]
fn shard_info_and_drivers_are_reported() {
    let (tx, rx) = flume::unbounded();
    let set = ShardSet::spawn(3, DriverChoice::Epoll, false, move |info| {
        let tx = tx.clone();
        async move {
            tx.send((
                info.id,
                info.count,
                info.driver,
                info.cpu,
                std::thread::current().name().map(str::to_owned),
            ))
            .unwrap();
        }
    })
    .unwrap();
    assert_eq!(set.len(), 3);
    set.join();
    let mut got: Vec<_> = rx.drain().collect();
    got.sort_by_key(|g| g.0);
    for (id, g) in got.iter().enumerate() {
        assert_eq!(g.0, id);
        assert_eq!(g.1, 3);
        assert_eq!(g.2, ActiveDriver::Epoll);
        assert_eq!(g.3, None, "not pinned");
        assert_eq!(g.4.as_deref(), Some(format!("shard-{id}").as_str()));
    }
    assert_eq!(got.len(), 3);
}

#[test]
fn zero_shards_is_an_error() {
    let err = ShardSet::spawn(0, DriverChoice::Epoll, false, |_| async {})
        .err()
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// io_uring refuses rings above 32768 entries with EINVAL, a real kernel failure on the same
/// path ENOMEM (RLIMIT_MEMLOCK), ENOSYS and EPERM take. `Auto` must land on epoll; an explicit
/// `Uring` must fail and say which driver.
#[test]
fn auto_falls_back_to_epoll_when_the_ring_cannot_be_built() {
    let impossible = 1 << 20;
    let got = run_on_current_thread_with(DriverChoice::Auto, impossible, |driver| async move {
        // The fallback runtime is fully usable: timers work.
        monoio::time::sleep(Duration::from_millis(1)).await;
        driver
    })
    .unwrap();
    assert_eq!(got, ActiveDriver::Epoll);

    let err = run_on_current_thread_with(DriverChoice::Uring, impossible, |d| async move { d })
        .err()
        .unwrap();
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .unwrap();
    match inner {
        Error::Driver { driver, source } => {
            assert_eq!(*driver, ActiveDriver::Uring);
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("io_uring"));
}

#[test]
fn auto_uses_io_uring_where_available() {
    // Where the kernel offers io_uring, Auto must not silently degrade to epoll.
    let got = run_on_current_thread(DriverChoice::Auto, |d| async move { d }).unwrap();
    let expected = if monoio::utils::detect_uring() {
        ActiveDriver::Uring
    } else {
        ActiveDriver::Epoll
    };
    assert_eq!(got, expected);
}

#[test]
fn the_shard_clock_ticks_inside_a_shard() {
    for choice in [DriverChoice::Uring, DriverChoice::Epoll] {
        let moved = run_on_current_thread(choice, |_| async {
            let clock = shard_clock();
            assert!(!clock.is_live());
            let start = clock.monotonic();
            let wall = clock.unix_millis();
            // Bounded: the ticker runs every 10 ms, so this ends after one or two rounds.
            for _ in 0..500 {
                monoio::time::sleep(Duration::from_millis(5)).await;
                if clock.monotonic() > start {
                    assert!(clock.unix_millis() >= wall);
                    return true;
                }
            }
            false
        })
        .unwrap();
        assert!(moved, "{choice:?}");
        // Back outside the shard, the thread-local clock is gone again.
        assert!(shard_clock().is_live());
    }
}
