//! The admin listener: `/healthz`, `/readyz`, `/metrics`. It runs on the control thread, never on a
//! shard, so scrapes cannot slow the data path; metrics are collected from the shards by message.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use shardgate_runtime::clock::monotonic_now;

use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};

pub mod api;

use crate::http1::{self, BodyFraming, Limits, Parsed, RequestHead};
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
    if let Some(rest) = path.strip_prefix(b"/apisix/admin/") {
        let resp = admin_api(
            &mut stream,
            &control,
            &head,
            buf,
            rest,
            deadline,
            &mut timer,
        )
        .await;
        let _ = stream.write_all(resp).await;
        return;
    }
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

/// Largest Admin API request body (APISIX objects are small; etcd's own limit is 1.5 MiB).
const MAX_ADMIN_BODY: u64 = 1024 * 1024;

/// `/apisix/admin/...`: off (404) unless `gateway.admin.admin_key` is set; the body is read in
/// full (bounded) and the API answers.
async fn admin_api(
    stream: &mut TcpStream,
    control: &Control,
    head: &RequestHead,
    mut buf: Vec<u8>,
    rest: &[u8],
    deadline: std::time::Instant,
    timer: &mut Timer,
) -> Vec<u8> {
    let keys = control
        .publisher
        .current()
        .config
        .gateway
        .admin
        .as_ref()
        .map(|a| a.keys.clone())
        .unwrap_or_default();
    let json = |a: api::Answer| response(a.status, "application/json", a.body);
    let err = |status: u16, msg: &str| {
        response(
            status,
            "application/json",
            format!("{}\n", serde_json::json!({ "error_msg": msg })).into_bytes(),
        )
    };
    if keys.is_empty() {
        return err(404, "the Admin API is off (set gateway.admin.admin_key)");
    }
    let len = match head.framing {
        BodyFraming::None => 0,
        BodyFraming::Length(n) if n <= MAX_ADMIN_BODY => n as usize,
        BodyFraming::Length(_) => return err(413, "request body too large"),
        _ => return err(411, "a Content-Length body is required"),
    };
    let start = head.head_len;
    while buf.len() < start + len {
        let (r, b) = read_more(stream, buf, 16 * 1024, Some(timer.until(deadline))).await;
        buf = b;
        if r.is_err() {
            return err(408, "request body not received in time");
        }
    }
    let Ok(path) = std::str::from_utf8(rest) else {
        return err(400, "invalid path");
    };
    let api_key = head
        .header(&buf, "x-api-key")
        .and_then(|v| std::str::from_utf8(v).ok());
    let query = head
        .query
        .map(|q| q.of(&buf))
        .and_then(|q| std::str::from_utf8(q).ok())
        .unwrap_or("");
    let req = api::Request {
        method: head.method,
        path,
        query,
        api_key,
        body: &buf[start..start + len],
    };
    let answer = api::handle(control, &keys, req).await;
    if answer.status >= 400 {
        tracing::info!(
            status = answer.status,
            method = head.method.as_str(),
            path,
            "admin API request refused"
        );
    }
    json(answer)
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 128);
    crate::http1::write::write_simple_head(&mut out, status, content_type, body.len(), true, true);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}
