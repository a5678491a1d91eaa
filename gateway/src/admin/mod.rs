//! The admin listener: `/healthz`, `/readyz`, `/metrics`. It runs on the control thread, never on a
//! shard, so scrapes cannot slow the data path; metrics are collected from the shards by message.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use shardgate_runtime::clock::monotonic_now;

use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};

use crate::http1::{self, Limits, Parsed, RequestHead};
use crate::proxy::io::{Timer, read_more};
use crate::server::Control;

pub async fn serve(addr: SocketAddr, control: Rc<Control>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    tracing::info!(%addr, "admin listener up (/healthz /readyz /metrics)");
    loop {
        let accepted = monoio::select! {
            a = listener.accept() => a,
            _ = control.shutdown.wait() => return Ok(()),
        };
        match accepted {
            Ok((stream, _)) => {
                let control = control.clone();
                monoio::spawn(async move { handle(stream, control).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, control: Rc<Control>) {
    let limits = Limits {
        max_header_bytes: 8192,
        max_headers: 64,
    };
    let mut head = RequestHead::new();
    let mut buf = Vec::with_capacity(2048);
    let deadline = monotonic_now() + Duration::from_secs(10);
    let mut timer = Timer::on_shard();
    loop {
        match http1::parse_request(&buf, &limits, &mut head) {
            Ok(Parsed::Complete) => break,
            Ok(Parsed::Partial) => {}
            Err(_) => {
                let _ = stream
                    .write_all(response(400, "text/plain", b"bad request\n".to_vec()))
                    .await;
                return;
            }
        }
        let (r, b) = read_more(&mut stream, buf, 2048, Some(timer.until(deadline))).await;
        buf = b;
        if r.is_err() {
            return;
        }
    }
    let path = head.path.of(&buf).to_vec();
    let resp = match path.as_slice() {
        b"/healthz" => response(200, "text/plain", b"ok\n".to_vec()),
        b"/readyz" => {
            let (ready, detail) = control.readiness();
            response(
                if ready { 200 } else { 503 },
                "application/json",
                detail.into_bytes(),
            )
        }
        b"/metrics" => {
            let text = control.collect_metrics().await;
            response(200, "text/plain; version=0.0.4", text.into_bytes())
        }
        _ => response(404, "text/plain", b"not found\n".to_vec()),
    };
    let _ = stream.write_all(resp).await;
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 128);
    crate::proxy::conn::write_simple_head(&mut out, status, content_type, body.len(), true, true);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}
