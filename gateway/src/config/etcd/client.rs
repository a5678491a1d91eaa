//! A small blocking client for etcd's v3 JSON gateway (`POST /v3/kv/range`, `/v3/watch`, ...):
//! HTTP/1.1 over std sockets, JSON bodies with base64 keys and values, 64-bit numbers as strings.
//! It runs on the etcd provider's own thread (and the Admin API's writes on the control side),
//! never on a shard.
//!
//! Why not an etcd gRPC crate: the maintained one (etcd-client) brings tokio, tonic, hyper and
//! prost plus protoc at build time; the JSON gateway is part of every etcd v3 server, and APISIX
//! itself talks to etcd through it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot reach etcd at {hosts}: {error}")]
    Connect { hosts: String, error: String },
    #[error("etcd {host}: {error}")]
    Io { host: String, error: std::io::Error },
    #[error("etcd {host}: {message}")]
    Protocol { host: String, message: String },
    /// The watch start revision was compacted away: a full re-read is needed.
    #[error("etcd revision {0} was compacted")]
    Compacted(i64),
}

/// etcd's JSON gateway writes int64 as strings.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

fn unb64(v: &Value) -> String {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The end of the range of every key starting with `prefix` (etcd's "prefix + 1").
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A key with its value and revisions (APISIX's `createdIndex` / `modifiedIndex`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
}

fn kvs_of(v: &Value) -> Vec<Kv> {
    v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| Kv {
                    key: unb64(&kv["key"]),
                    value: unb64(&kv["value"]),
                    create_revision: int(&kv["create_revision"]),
                    mod_revision: int(&kv["mod_revision"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put { key: String, value: String },
    Delete { key: String },
}

pub struct Client {
    hosts: Vec<String>,
    /// The member that answered last; tried first.
    current: usize,
    timeout: Duration,
    auth: Option<(String, String)>,
    token: Option<String>,
}

impl Client {
    pub fn new(hosts: Vec<String>, timeout: Duration, auth: Option<(String, String)>) -> Client {
        Client {
            hosts,
            current: 0,
            timeout,
            auth,
            token: None,
        }
    }

    /// Connects to the first member that accepts, starting with the last one that worked.
    fn connect(&mut self) -> Result<(TcpStream, String), EtcdError> {
        let mut last = String::from("no host configured");
        for step in 0..self.hosts.len() {
            let i = (self.current + step) % self.hosts.len();
            let host = &self.hosts[i];
            let addrs = match host.to_socket_addrs() {
                Ok(a) => a,
                Err(e) => {
                    last = format!("{host}: {e}");
                    continue;
                }
            };
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, self.timeout) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        self.current = i;
                        return Ok((s, host.clone()));
                    }
                    Err(e) => last = format!("{host}: {e}"),
                }
            }
        }
        Err(EtcdError::Connect {
            hosts: self.hosts.join(","),
            error: last,
        })
    }

    fn head(&self, host: &str, path: &str, body_len: usize) -> String {
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: {t}\r\n"))
            .unwrap_or_default();
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n{auth}Connection: close\r\n\r\n"
        )
    }

    /// One request, the whole answer read (the connection is closed by etcd after it).
    fn call_once(&mut self, path: &str, body: &Value) -> Result<(u16, Value), EtcdError> {
        let (mut stream, host) = self.connect()?;
        let io = |error| EtcdError::Io {
            host: host.clone(),
            error,
        };
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let body = body.to_string();
        let mut req = self.head(&host, path, body.len()).into_bytes();
        req.extend_from_slice(body.as_bytes());
        stream.write_all(&req).map_err(io)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(io)?;
        let (status, head_len, chunked) =
            parse_head(&raw, &host)?.ok_or_else(|| EtcdError::Protocol {
                host: host.clone(),
                message: "incomplete response head".to_owned(),
            })?;
        let body = if chunked {
            let mut out = Vec::new();
            let mut rest = raw[head_len..].to_vec();
            if !dechunk(&mut rest, &mut out, &host)? {
                return Err(EtcdError::Protocol {
                    host: host.clone(),
                    message: "the chunked answer was cut short".to_owned(),
                });
            }
            out
        } else {
            raw[head_len..].to_vec()
        };
        let v: Value = serde_json::from_slice(&body).map_err(|e| EtcdError::Protocol {
            host: host.clone(),
            message: format!("answer is not JSON ({e})"),
        })?;
        Ok((status, v))
    }

    /// A request, authenticating first (and once more if the token expired) when a user is set.
    fn call(&mut self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        for attempt in 0..2 {
            if self.auth.is_some() && self.token.is_none() {
                self.authenticate()?;
            }
            let (status, v) = self.call_once(path, body)?;
            if status == 200 {
                return Ok(v);
            }
            let message = v
                .get("error")
                .or_else(|| v.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if attempt == 0 && self.auth.is_some() && message.contains("token") {
                self.token = None;
                continue;
            }
            return Err(EtcdError::Protocol {
                host: self.hosts[self.current].clone(),
                message: format!("{path}: HTTP {status}: {message}"),
            });
        }
        Err(EtcdError::Protocol {
            host: self.hosts[self.current].clone(),
            message: format!("{path}: authentication keeps failing"),
        })
    }

    fn authenticate(&mut self) -> Result<(), EtcdError> {
        let Some((user, password)) = self.auth.clone() else {
            return Ok(());
        };
        let (status, v) = self.call_once(
            "/v3/auth/authenticate",
            &json!({ "name": user, "password": password }),
        )?;
        match v.get("token").and_then(Value::as_str) {
            Some(t) if status == 200 => {
                self.token = Some(t.to_owned());
                Ok(())
            }
            _ => Err(EtcdError::Protocol {
                host: self.hosts[self.current].clone(),
                message: format!(
                    "authentication as `{user}` failed (HTTP {status}): {}",
                    v.get("error").and_then(Value::as_str).unwrap_or("")
                ),
            }),
        }
    }

    /// Every key under `prefix`, with the store's revision at the time of the read.
    pub fn range(&mut self, prefix: &str) -> Result<(i64, Vec<(String, String)>), EtcdError> {
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
        )?;
        let revision = int(&v["header"]["revision"]);
        let kvs = v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (unb64(&kv["key"]), unb64(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default();
        Ok((revision, kvs))
    }

    /// Every key under `prefix` with its revisions.
    pub fn range_kvs(&mut self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
        )?;
        Ok(kvs_of(&v))
    }

    /// The value at `key`, if any.
    pub fn get(&mut self, key: &str) -> Result<Option<String>, EtcdError> {
        Ok(self.get_kv(key)?.map(|kv| kv.value))
    }

    /// The value at `key` with its revisions, if any.
    pub fn get_kv(&mut self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self.call("/v3/kv/range", &json!({ "key": b64(key) }))?;
        Ok(kvs_of(&v).into_iter().next())
    }

    /// Writes `value` at `key`; returns the new revision.
    pub fn put(&mut self, key: &str, value: &str) -> Result<i64, EtcdError> {
        self.put_ttl(key, value, None)
    }

    /// Writes `value` at `key`, on a lease of `ttl` seconds when given (etcd deletes the key when
    /// the lease expires: APISIX's `?ttl=`); returns the new revision.
    pub fn put_ttl(&mut self, key: &str, value: &str, ttl: Option<u64>) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64(key), "value": b64(value) });
        if let Some(ttl) = ttl {
            let lease = self.call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
            let id = int(&lease["ID"]);
            if id == 0 {
                return Err(EtcdError::Protocol {
                    host: self.hosts[self.current].clone(),
                    message: format!("/v3/lease/grant: no lease id in {lease}"),
                });
            }
            body["lease"] = Value::String(id.to_string());
        }
        let v = self.call("/v3/kv/put", &body)?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub fn delete(&mut self, key: &str) -> Result<i64, EtcdError> {
        let v = self.call("/v3/kv/deleterange", &json!({ "key": b64(key) }))?;
        Ok(int(&v["deleted"]))
    }

    /// Starts a watch of every key under `prefix` from `start_revision`.
    pub fn watch(&mut self, prefix: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        if self.auth.is_some() && self.token.is_none() {
            self.authenticate()?;
        }
        let (mut stream, host) = self.connect()?;
        let io = |error| EtcdError::Io {
            host: host.clone(),
            error,
        };
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        // Short reads so the owner can look at its shutdown flag between them.
        stream
            .set_read_timeout(Some(Duration::from_millis(250)))
            .map_err(io)?;
        let body = json!({ "create_request": {
            "key": b64(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }})
        .to_string();
        let mut req = self
            .head(&host, "/v3/watch", body.len())
            .replace("Connection: close\r\n", "")
            .into_bytes();
        req.extend_from_slice(body.as_bytes());
        stream.write_all(&req).map_err(io)?;
        Ok(Watch {
            stream,
            host,
            raw: Vec::new(),
            body: Vec::new(),
            head_done: false,
            chunked: false,
            ended: false,
        })
    }
}

/// Status, head length and whether the body is chunked; None until the head is complete.
fn parse_head(raw: &[u8], host: &str) -> Result<Option<(u16, usize, bool)>, EtcdError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(raw) {
        Ok(httparse::Status::Complete(len)) => {
            let chunked = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding")
                    && String::from_utf8_lossy(h.value)
                        .to_ascii_lowercase()
                        .contains("chunked")
            });
            Ok(Some((resp.code.unwrap_or(0), len, chunked)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(EtcdError::Protocol {
            host: host.to_owned(),
            message: format!("bad response head: {e}"),
        }),
    }
}

/// Moves every complete chunk of `raw` to `out`; true once the last chunk (size 0) was seen.
fn dechunk(raw: &mut Vec<u8>, out: &mut Vec<u8>, host: &str) -> Result<bool, EtcdError> {
    let bad = |m: &str| EtcdError::Protocol {
        host: host.to_owned(),
        message: m.to_owned(),
    };
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return Ok(false);
        };
        let line = std::str::from_utf8(&raw[..eol]).map_err(|_| bad("bad chunk size"))?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            raw.clear();
            return Ok(true);
        }
        if raw.len() < eol + 2 + size + 2 {
            return Ok(false);
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw.drain(..eol + 2 + size + 2);
    }
}

/// A watch stream: one JSON message per `WatchResponse`.
pub struct Watch {
    stream: TcpStream,
    host: String,
    /// Bytes read, not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body bytes not yet parsed as JSON.
    body: Vec<u8>,
    head_done: bool,
    chunked: bool,
    /// The last chunk arrived: etcd ended the watch.
    ended: bool,
}

/// What one watch message said.
#[derive(Debug)]
pub struct WatchBatch {
    pub revision: i64,
    pub changes: Vec<Change>,
}

impl Watch {
    /// The next batch of changes; Ok(None) when nothing arrived within a short read timeout
    /// (the caller checks its shutdown flag and calls again). Err when the stream ended, failed or
    /// was cancelled (a compacted start revision is [`EtcdError::Compacted`]).
    pub fn next_batch(&mut self) -> Result<Option<WatchBatch>, EtcdError> {
        loop {
            if let Some(batch) = self.parse_one()? {
                return Ok(Some(batch));
            }
            if self.ended {
                return Err(EtcdError::Protocol {
                    host: self.host.clone(),
                    message: "the watch stream ended".to_owned(),
                });
            }
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(EtcdError::Protocol {
                        host: self.host.clone(),
                        message: "the watch stream was closed".to_owned(),
                    });
                }
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => {
                    return Err(EtcdError::Io {
                        host: self.host.clone(),
                        error: e,
                    });
                }
            }
        }
    }

    fn parse_one(&mut self) -> Result<Option<WatchBatch>, EtcdError> {
        if !self.head_done {
            let Some((status, len, chunked)) = parse_head(&self.raw, &self.host)? else {
                return Ok(None);
            };
            if status != 200 {
                return Err(EtcdError::Protocol {
                    host: self.host.clone(),
                    message: format!("/v3/watch: HTTP {status}"),
                });
            }
            self.raw.drain(..len);
            self.head_done = true;
            self.chunked = chunked;
        }
        // The last chunk ends the watch: what came before it is still parsed below, and the
        // next read reports the closed stream.
        if self.chunked && dechunk(&mut self.raw, &mut self.body, &self.host)? {
            self.ended = true;
        } else if !self.chunked {
            self.body.append(&mut self.raw);
        }
        loop {
            let start = self
                .body
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.body.len());
            self.body.drain(..start);
            if self.body.is_empty() {
                return Ok(None);
            }
            let mut it = serde_json::Deserializer::from_slice(&self.body).into_iter::<Value>();
            let msg = match it.next() {
                Some(Ok(v)) => v,
                Some(Err(e)) if e.is_eof() => return Ok(None),
                Some(Err(e)) => {
                    return Err(EtcdError::Protocol {
                        host: self.host.clone(),
                        message: format!("bad watch message: {e}"),
                    });
                }
                None => return Ok(None),
            };
            let used = it.byte_offset();
            self.body.drain(..used);
            if let Some(batch) = self.message(&msg)? {
                return Ok(Some(batch));
            }
        }
    }

    /// A batch, or None for messages without changes (the creation answer, progress notes).
    fn message(&self, msg: &Value) -> Result<Option<WatchBatch>, EtcdError> {
        if let Some(err) = msg.get("error") {
            return Err(EtcdError::Protocol {
                host: self.host.clone(),
                message: format!("watch error: {err}"),
            });
        }
        let result = &msg["result"];
        let compacted = int(&result["compact_revision"]);
        if compacted > 0 {
            return Err(EtcdError::Compacted(compacted));
        }
        if result["canceled"].as_bool() == Some(true) {
            return Err(EtcdError::Protocol {
                host: self.host.clone(),
                message: format!(
                    "the watch was cancelled: {}",
                    result["cancel_reason"].as_str().unwrap_or("")
                ),
            });
        }
        let Some(events) = result["events"].as_array() else {
            return Ok(None);
        };
        let changes = events
            .iter()
            .map(|e| {
                let key = unb64(&e["kv"]["key"]);
                if e["type"].as_str() == Some("DELETE") {
                    Change::Delete { key }
                } else {
                    Change::Put {
                        key,
                        value: unb64(&e["kv"]["value"]),
                    }
                }
            })
            .collect();
        Ok(Some(WatchBatch {
            revision: int(&result["header"]["revision"]),
            changes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/apisix/"), b"/apisix0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn chunks_are_joined_and_the_last_one_ends_the_stream() {
        let mut raw = b"5\r\nhello\r\n6\r\n world\r\n3\r\nab".to_vec();
        let mut out = Vec::new();
        assert!(!dechunk(&mut raw, &mut out, "h").expect("partial is fine"));
        assert_eq!(out, b"hello world");
        assert_eq!(raw, b"3\r\nab");
        raw.extend_from_slice(b"c\r\n0\r\n\r\n");
        assert!(dechunk(&mut raw, &mut out, "h").expect("complete"));
        assert_eq!(out, b"hello worldabc");
    }
}
