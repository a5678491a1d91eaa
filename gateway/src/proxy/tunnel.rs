//! After a `101 Switching Protocols`: the client connection and the upstream connection become
//! one byte tunnel (WebSocket and other upgrades), outside HTTP.

use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use shardgate_runtime::clock::monotonic_now;

use crate::upstream::pool::UpConn;

/// Copies bytes both ways until either side closes, or until `idle` passes without a byte in
/// either direction (APISIX's upstream `timeout.read` for upgraded connections); both
/// connections end with it.
pub async fn tunnel(
    client: crate::proxy::stream::ClientStream,
    upstream: UpConn,
    idle: Duration,
    gate: &shardgate_runtime::Gate,
) {
    use crate::proxy::stream::ClientStream;
    use crate::upstream::tls::UpStream;
    use monoio::io::Splitable;
    match (client, upstream.stream) {
        (ClientStream::Plain(c), UpStream::Plain(u)) => {
            let ((cr, cw), (ur, uw)) = (c.into_split(), u.into_split());
            copy_both(cr, cw, ur, uw, idle, gate).await;
        }
        (ClientStream::Tls(c), UpStream::Plain(u)) => {
            let ((cr, cw), (ur, uw)) = ((*c).into_split(), u.into_split());
            copy_both(cr, cw, ur, uw, idle, gate).await;
        }
        (ClientStream::Plain(c), UpStream::Tls(u)) => {
            let ((cr, cw), (ur, uw)) = (c.into_split(), (*u).into_split());
            copy_both(cr, cw, ur, uw, idle, gate).await;
        }
        (ClientStream::Tls(c), UpStream::Tls(u)) => {
            let ((cr, cw), (ur, uw)) = ((*c).into_split(), (*u).into_split());
            copy_both(cr, cw, ur, uw, idle, gate).await;
        }
    }
}

/// Moves bytes from `r` to `w`, stamping `last` at every read, until EOF or an error.
async fn copy_stamped<R, W>(r: &mut R, w: &mut W, last: &std::cell::Cell<Instant>)
where
    R: monoio::io::AsyncReadRent,
    W: monoio::io::AsyncWriteRent,
{
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let (res, b) = r.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        last.set(monotonic_now());
        let (res, b) = w.write_all(buf).await;
        buf = b;
        if res.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

async fn copy_both<CR, CW, UR, UW>(
    mut cr: CR,
    mut cw: CW,
    mut ur: UR,
    mut uw: UW,
    idle: Duration,
    gate: &shardgate_runtime::Gate,
) where
    CR: monoio::io::AsyncReadRent,
    CW: monoio::io::AsyncWriteRent,
    UR: monoio::io::AsyncReadRent,
    UW: monoio::io::AsyncWriteRent,
{
    let last = std::cell::Cell::new(monotonic_now());
    let both = async {
        monoio::join!(
            copy_stamped(&mut cr, &mut uw, &last),
            copy_stamped(&mut ur, &mut cw, &last)
        );
    };
    let watch = async {
        loop {
            let due = last.get() + idle;
            if monotonic_now() >= due {
                return;
            }
            monoio::time::sleep_until(due.into()).await;
        }
    };
    let ended = monoio::select! {
        _ = both => false,
        _ = watch => true,
        _ = gate.expired() => true,
    };
    if ended {
        // Idle or the drain time is over: shut both sides down (FIN, or TLS close_notify) so
        // client and upstream see a clean end rather than a reset; bounded, as a peer that does
        // not read could hold a TLS shutdown's write forever.
        let close = async {
            let _ = monoio::join!(cw.shutdown(), uw.shutdown());
        };
        let _ = monoio::time::timeout(Duration::from_secs(1), close).await;
    }
}
