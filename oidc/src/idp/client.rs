//! A small HTTP/1.1 client for identity-provider calls (discovery, JWKS, token, introspection,
//! userinfo, revocation) on a monoio runtime.
//!
//! Why our own: the monoio HTTP clients pull an old rustls; IdP traffic is small JSON, so a client
//! with keep-alive, rustls, `timeout`, `proxy_opts` (HTTP CONNECT) and bounded bodies is ~400 lines.
//! A client instance is single-threaded (`Rc`/`RefCell` pool): one lives on each thread that calls
//! the IdP.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_runtime::clock::monotonic_now;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Client settings, from the plugin's `timeout`, `ssl_verify`, `proxy_opts`.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub timeout: Duration,
    pub ssl_verify: bool,
    /// Extra PEM CA bundle trusted besides the system roots.
    pub ca_file: Option<String>,
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub http_proxy_authorization: Option<String>,
    pub https_proxy_authorization: Option<String>,
    /// Hosts (exact or `.suffix`) that bypass the proxy.
    pub no_proxy: Vec<String>,
    /// Responses larger than this are refused (an IdP answer is a few KiB).
    pub max_body: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(3),
            ssl_verify: true,
            ca_file: None,
            http_proxy: None,
            https_proxy: None,
            http_proxy_authorization: None,
            https_proxy_authorization: None,
            no_proxy: Vec::new(),
            max_body: 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IdpError {
    #[error("invalid URL {0}")]
    BadUrl(String),
    #[error("connect to {0} failed: {1}")]
    Connect(String, String),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    #[error("{0} did not answer within the timeout")]
    Timeout(String),
    #[error("i/o with {0}: {1}")]
    Io(String, String),
    #[error("{0} sent a malformed HTTP response: {1}")]
    BadResponse(String, &'static str),
    #[error("{0} sent a response larger than {1} bytes")]
    TooLarge(String, usize),
    #[error("proxy refused CONNECT to {0}: status {1}")]
    Proxy(String, u16),
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
}

/// A complete response (bodies are small and bounded).
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed `http(s)://host[:port]/path?query`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path plus query, always starting with `/`.
    pub target: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, IdpError> {
        let bad = || IdpError::BadUrl(s.to_string());
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(bad)?;
            let host = &v6[..end];
            let port = match &v6[end + 1..] {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(bad)?,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() || target.contains(['\r', '\n', ' ']) {
            return Err(bad());
        }
        Ok(Url {
            https,
            host,
            port,
            target,
        })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.https { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn origin_key(&self) -> String {
        format!(
            "{}://{}:{}",
            if self.https { "https" } else { "http" },
            self.host,
            self.port
        )
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl Conn {
    async fn write_all(&mut self, buf: Vec<u8>) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(buf).await.0.map(|_| ()),
            Conn::Tls(s) => {
                s.write_all(buf).await.0?;
                s.flush().await
            }
        }
    }

    async fn read(&mut self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        let (r, slice) = match self {
            Conn::Plain(s) => s.read(buf.slice_mut(len..)).await,
            Conn::Tls(s) => s.read(buf.slice_mut(len..)).await,
        };
        (r, slice.into_inner())
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Keep-alive HTTP/1.1 client; one per thread.
pub struct Client {
    cfg: ClientConfig,
    tls: monoio_rustls::TlsConnector,
    idle: RefCell<HashMap<String, Vec<Idle>>>,
}

const IDLE_KEEP: Duration = Duration::from_secs(30);

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Client, IdpError> {
        let tls = tls_connector(&cfg)?;
        Ok(Client {
            cfg,
            tls,
            idle: RefCell::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    pub async fn get(&self, url: &str, headers: &[(String, String)]) -> Result<Response, IdpError> {
        self.request("GET", url, headers, None).await
    }

    /// `application/x-www-form-urlencoded` POST.
    pub async fn post_form(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Response, IdpError> {
        self.request("POST", url, headers, Some(body)).await
    }

    /// One request within `timeout`. A pooled connection that turns out closed is retried once on
    /// a fresh connection (idempotence is the IdP's business: we only retry when nothing was read).
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> Result<Response, IdpError> {
        let url = Url::parse(url)?;
        let deadline = monotonic_now() + self.cfg.timeout;
        match monoio::time::timeout_at(
            deadline.into(),
            self.request_inner(method, &url, headers, body),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(IdpError::Timeout(url.origin_key())),
        }
    }

    async fn request_inner(
        &self,
        method: &str,
        url: &Url,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> Result<Response, IdpError> {
        let via_proxy = self.proxy_for(url);
        let mut req = Vec::with_capacity(512 + body.map_or(0, |b| b.len()));
        req.extend_from_slice(method.as_bytes());
        req.push(b' ');
        match (&via_proxy, url.https) {
            // Plain http through a proxy: absolute-form target, as RFC 9112 3.2.2 wants.
            (Some(_), false) => {
                req.extend_from_slice(
                    format!("http://{}{}", url.authority(), url.target).as_bytes(),
                );
            }
            _ => req.extend_from_slice(url.target.as_bytes()),
        }
        req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        req.extend_from_slice(url.authority().as_bytes());
        req.extend_from_slice(b"\r\nUser-Agent: shardgate\r\nAccept: application/json\r\n");
        if let (Some(_), false, Some(a)) =
            (&via_proxy, url.https, &self.cfg.http_proxy_authorization)
        {
            req.extend_from_slice(format!("Proxy-Authorization: {a}\r\n").as_bytes());
        }
        for (k, v) in headers {
            if k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
                continue;
            }
            req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if let Some(b) = body {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                req.extend_from_slice(b"Content-Type: application/x-www-form-urlencoded\r\n");
            }
            req.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            req.extend_from_slice(b);
        }

        let key = url.origin_key();
        let pooled = self.checkout(&key);
        let was_pooled = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect(url, via_proxy.as_deref()).await?,
        };
        match self.exchange(&mut conn, &req, method == "HEAD", url).await {
            Ok((resp, reusable)) => {
                if reusable {
                    self.checkin(key, conn);
                }
                Ok(resp)
            }
            Err((e, nothing_read)) if was_pooled && nothing_read => {
                drop(conn);
                let mut conn = self.connect(url, via_proxy.as_deref()).await?;
                let (resp, reusable) = self
                    .exchange(&mut conn, &req, method == "HEAD", url)
                    .await
                    .map_err(|(e2, _)| {
                        tracing::debug!(error = %e, "stale pooled IdP connection");
                        e2
                    })?;
                if reusable {
                    self.checkin(key, conn);
                }
                Ok(resp)
            }
            Err((e, _)) => Err(e),
        }
    }

    fn proxy_for(&self, url: &Url) -> Option<String> {
        let proxy = if url.https {
            self.cfg.https_proxy.as_ref()
        } else {
            self.cfg.http_proxy.as_ref()
        }?;
        let bypass = self.cfg.no_proxy.iter().any(|n| {
            n == "*" || n == &url.host || (n.starts_with('.') && url.host.ends_with(n.as_str()))
        });
        (!bypass).then(|| proxy.clone())
    }

    fn checkout(&self, key: &str) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some(i) = list.pop() {
            if monotonic_now().saturating_duration_since(i.since) < IDLE_KEEP {
                return Some(i.conn);
            }
        }
        None
    }

    fn checkin(&self, key: String, conn: Conn) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() < 8 {
            list.push(Idle {
                conn,
                since: monotonic_now(),
            });
        }
    }

    async fn connect(&self, url: &Url, proxy: Option<&str>) -> Result<Conn, IdpError> {
        let (host, port) = match proxy {
            Some(p) => {
                let p = Url::parse(p)?;
                (p.host, p.port)
            }
            None => (url.host.clone(), url.port),
        };
        let target = format!("{host}:{port}");
        let stream = TcpStream::connect(target.as_str())
            .await
            .map_err(|e| IdpError::Connect(target.clone(), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        if proxy.is_some() && url.https {
            // HTTP CONNECT tunnel, then TLS end to end with the IdP.
            let mut req = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n", url.authority());
            if let Some(a) = &self.cfg.https_proxy_authorization {
                req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
            }
            req.push_str("\r\n");
            let (r, _) = stream.write_all(req.into_bytes()).await;
            r.map_err(|e| IdpError::Io(target.clone(), e.to_string()))?;
            let mut buf = Vec::with_capacity(1024);
            loop {
                if buf.len() > 16 * 1024 {
                    return Err(IdpError::BadResponse(
                        target,
                        "proxy response head too large",
                    ));
                }
                buf.reserve(1024);
                let len = buf.len();
                let (r, slice) = stream.read(buf.slice_mut(len..)).await;
                buf = slice.into_inner();
                match r {
                    Ok(0) => {
                        return Err(IdpError::BadResponse(target, "proxy closed during CONNECT"));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(IdpError::Io(target, e.to_string())),
                }
                let mut hs = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut hs);
                match resp.parse(&buf) {
                    Ok(httparse::Status::Complete(_)) => {
                        let code = resp.code.unwrap_or(0);
                        if !(200..300).contains(&code) {
                            return Err(IdpError::Proxy(url.authority(), code));
                        }
                        break;
                    }
                    Ok(httparse::Status::Partial) => continue,
                    Err(_) => {
                        return Err(IdpError::BadResponse(target, "malformed CONNECT response"));
                    }
                }
            }
        }
        if !url.https {
            return Ok(Conn::Plain(stream));
        }
        let name = ServerName::try_from(url.host.clone())
            .map_err(|e| IdpError::Tls(url.host.clone(), e.to_string()))?;
        let tls = self
            .tls
            .connect(name, stream)
            .await
            .map_err(|e| IdpError::Tls(url.authority(), e.to_string()))?;
        Ok(Conn::Tls(Box::new(tls)))
    }

    /// Writes the request and reads one response. Err carries whether nothing at all was read
    /// (the signature of a keep-alive connection the server had closed).
    async fn exchange(
        &self,
        conn: &mut Conn,
        req: &[u8],
        head_only: bool,
        url: &Url,
    ) -> Result<(Response, bool), (IdpError, bool)> {
        let who = url.origin_key();
        conn.write_all(req.to_vec())
            .await
            .map_err(|e| (IdpError::Io(who.clone(), e.to_string()), true))?;
        let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
        let max = self.cfg.max_body + 64 * 1024;
        loop {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(8 * 1024);
            }
            let (r, b) = conn.read(buf).await;
            buf = b;
            let n = match r {
                Ok(n) => n,
                Err(e) => return Err((IdpError::Io(who, e.to_string()), buf.is_empty())),
            };
            let eof = n == 0;
            if eof && buf.is_empty() {
                return Err((
                    IdpError::BadResponse(who, "connection closed before a response"),
                    true,
                ));
            }
            match parse_response(&buf, head_only, eof, self.cfg.max_body) {
                Ok(Some(done)) => return Ok(done),
                Ok(None) if eof => {
                    return Err((
                        IdpError::BadResponse(who, "connection closed mid-response"),
                        false,
                    ));
                }
                Ok(None) => {}
                Err(ParseFail::TooLarge) => {
                    return Err((IdpError::TooLarge(who, self.cfg.max_body), false));
                }
                Err(ParseFail::Bad(why)) => return Err((IdpError::BadResponse(who, why), false)),
            }
            if buf.len() > max {
                return Err((IdpError::TooLarge(who, self.cfg.max_body), false));
            }
        }
    }
}

/// Why [`parse_response`] refused the bytes read so far.
#[derive(Debug)]
pub enum ParseFail {
    TooLarge,
    Bad(&'static str),
}

/// Parses a complete response out of `buf`, or `None` when more bytes are needed. The bool is
/// whether the connection may be reused. Public for the fuzz targets; [`Client`] is its only caller.
pub fn parse_response(
    buf: &[u8],
    head_only: bool,
    eof: bool,
    max_body: usize,
) -> Result<Option<(Response, bool)>, ParseFail> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ParseFail::Bad("malformed response head")),
    };
    let status = resp.code.unwrap_or(0);
    let mut headers = Vec::with_capacity(resp.headers.len());
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        let v = String::from_utf8_lossy(h.value).into_owned();
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                v.trim()
                    .parse()
                    .map_err(|_| ParseFail::Bad("bad Content-Length"))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = v.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
        headers.push((h.name.to_string(), v));
    }
    let rest = &buf[head_len..];
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    let (body, complete_at) = if no_body {
        (Vec::new(), head_len)
    } else if chunked {
        match dechunk(rest, max_body)? {
            Some((body, used)) => (body, head_len + used),
            None => return Ok(None),
        }
    } else if let Some(n) = content_length {
        if n > max_body {
            return Err(ParseFail::TooLarge);
        }
        if rest.len() < n {
            return Ok(None);
        }
        (rest[..n].to_vec(), head_len + n)
    } else {
        // Close-delimited.
        if rest.len() > max_body {
            return Err(ParseFail::TooLarge);
        }
        if !eof {
            return Ok(None);
        }
        close = true;
        (rest.to_vec(), buf.len())
    };
    let reusable = !close && complete_at == buf.len();
    Ok(Some((
        Response {
            status,
            headers,
            body,
        },
        reusable,
    )))
}

/// Decodes a whole chunked body; `None` when incomplete.
fn dechunk(mut input: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, ParseFail> {
    let total = input.len();
    let mut body = Vec::new();
    loop {
        let Some(line_end) = input.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &input[..line_end];
        let size_hex = line.split(|b| *b == b';').next().unwrap_or(line);
        let size_str = std::str::from_utf8(size_hex)
            .map_err(|_| ParseFail::Bad("bad chunk size"))?
            .trim();
        let size =
            usize::from_str_radix(size_str, 16).map_err(|_| ParseFail::Bad("bad chunk size"))?;
        input = &input[line_end + 2..];
        if size == 0 {
            // Trailers end with an empty line.
            let mut rest = input;
            loop {
                let Some(e) = rest.windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                rest = &rest[e + 2..];
                if e == 0 {
                    return Ok(Some((body, total - rest.len())));
                }
            }
        }
        // Compared without adding: a size near usize::MAX (`ffffffffffffffff`) would overflow.
        if size > max_body.saturating_sub(body.len()) {
            return Err(ParseFail::TooLarge);
        }
        if input.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&input[..size]);
        if &input[size..size + 2] != b"\r\n" {
            return Err(ParseFail::Bad("chunk not followed by CRLF"));
        }
        input = &input[size + 2..];
    }
}

fn tls_connector(cfg: &ClientConfig) -> Result<monoio_rustls::TlsConnector, IdpError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| IdpError::TlsConfig(e.to_string()))?;
    let config = if cfg.ssl_verify {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = &cfg.ca_file {
            let pem =
                std::fs::read(path).map_err(|e| IdpError::TlsConfig(format!("{path}: {e}")))?;
            for cert in rustls_pemfile_certs(&pem) {
                roots
                    .add(cert)
                    .map_err(|e| IdpError::TlsConfig(format!("{path}: {e}")))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    };
    Ok(monoio_rustls::TlsConnector::from(Arc::new(config)))
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// `ssl_verify: false`: accept any certificate (documented as dangerous, off by default).
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl fmt::Debug for NoVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NoVerify")
    }
}

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_size_near_usize_max_is_too_large_not_an_overflow() {
        for size in ["ffffffffffffffff", "fffffffffffffffe", "7fffffffffffffff"] {
            let input = format!("{size}\r\nabc\r\n0\r\n\r\n");
            assert!(
                matches!(dechunk(input.as_bytes(), 1024), Err(ParseFail::TooLarge)),
                "{size}"
            );
        }
        // After a first chunk, the remaining budget is what counts.
        let input = b"3\r\nabc\r\nfffffffffffffffd\r\nx\r\n0\r\n\r\n";
        assert!(matches!(dechunk(input, 1024), Err(ParseFail::TooLarge)));
        let ok = dechunk(b"3\r\nabc\r\n0\r\n\r\n", 3).ok().flatten();
        assert_eq!(ok.map(|(b, _)| b), Some(b"abc".to_vec()));
    }

    #[test]
    fn ca_file_is_loaded_and_a_bad_one_is_named() {
        use base64::Engine as _;
        let der = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/rsa2.cert.der"
        ))
        .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
        let path = std::env::temp_dir().join(format!("shardgate-ca-{}.pem", std::process::id()));
        std::fs::write(&path, pem).unwrap();
        let ok = ClientConfig {
            ca_file: Some(path.display().to_string()),
            ..ClientConfig::default()
        };
        assert!(Client::new(ok).is_ok());
        let _ = std::fs::remove_file(&path);
        let missing = ClientConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..ClientConfig::default()
        };
        match Client::new(missing) {
            Err(IdpError::TlsConfig(msg)) => assert!(msg.contains("/nonexistent/ca.pem"), "{msg}"),
            other => panic!("expected a TLS config error, got {:?}", other.err()),
        }
    }

    #[test]
    fn url_parsing() {
        let u = Url::parse("https://idp.example.com/realms/x/.well-known/openid-configuration")
            .unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port),
            (true, "idp.example.com", 443)
        );
        assert_eq!(u.target, "/realms/x/.well-known/openid-configuration");
        let u = Url::parse("http://127.0.0.1:9800").unwrap();
        assert_eq!((u.port, u.target.as_str()), (9800, "/"));
        let u = Url::parse("http://[::1]:81/a?b=c").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("::1", 81, "/a?b=c")
        );
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://x/a b").is_err());
    }

    #[test]
    fn parses_length_chunked_and_close_delimited() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let (resp, reuse) = parse_response(r, false, false, 1024)
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(
            (resp.status, resp.body.as_slice(), reuse),
            (200, &b"{}"[..], true)
        );
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        let (resp, _) = parse_response(r, false, false, 1024)
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(resp.body, b"{}");
        let partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n";
        assert!(
            parse_response(partial, false, false, 1024)
                .ok()
                .unwrap()
                .is_none()
        );
        let r = b"HTTP/1.1 200 OK\r\n\r\nabc";
        assert!(
            parse_response(r, false, false, 1024)
                .ok()
                .unwrap()
                .is_none()
        );
        let (resp, reuse) = parse_response(r, false, true, 1024).ok().flatten().unwrap();
        assert_eq!((resp.body.as_slice(), reuse), (&b"abc"[..], false));
        let big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n";
        assert!(matches!(
            parse_response(big, false, false, 1024),
            Err(ParseFail::TooLarge)
        ));
    }
}
