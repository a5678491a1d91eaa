//! The client side of a connection: plain TCP, or TLS terminated on the shard.
//!
//! An enum rather than a generic parameter so the request pipeline (conn.rs, forward.rs) is compiled
//! once; the match per read/write is a predictable branch next to a syscall or an io_uring op.
//! The TLS branch boxes its future: rustls' read/write futures are several times the size of a
//! socket op's, and unboxed they would enlarge (and make every plain-TCP request copy) each I/O
//! future in the pipeline, measured at +4% instructions per plain request. One small allocation
//! per TLS read or write is cheap next to the record's AES-GCM.

use std::sync::Arc;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio_rustls::ServerTlsStream;

pub enum ClientStream {
    Plain(TcpStream),
    /// Boxed: the rustls state is large and would otherwise grow every connection future.
    Tls(Box<ServerTlsStream<TcpStream>>),
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

impl AsyncReadRent for ClientStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.read(buf).await,
            ClientStream::Tls(s) => Box::pin(s.read(buf)).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.readv(buf).await,
            ClientStream::Tls(s) => Box::pin(s.readv(buf)).await,
        }
    }
}

impl AsyncWriteRent for ClientStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.write(buf).await,
            ClientStream::Tls(s) => Box::pin(s.write(buf)).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.writev(buf).await,
            ClientStream::Tls(s) => Box::pin(s.writev(buf)).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.flush().await,
            ClientStream::Tls(s) => Box::pin(s.flush()).await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.shutdown().await,
            ClientStream::Tls(s) => Box::pin(s.shutdown()).await,
        }
    }
}

/// The shard's TLS acceptor. Each shard builds its own `ServerConfig`, so the session cache's
/// lock inside rustls is never contended across cores.
pub type Acceptor = monoio_rustls::TlsAcceptor;

/// A certificate chain and its key, loaded once per config version by the control side and
/// shared read-only with the shards (`Published::tls_key`).
pub type CertKey = Arc<rustls::sign::CertifiedKey>;

/// Loads a PEM certificate chain (leaf first) and its private key, checking that they match.
pub fn load_cert_key(cert: &std::path::Path, key: &std::path::Path) -> Result<CertKey, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("gateway.tls.cert: {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("gateway.tls.cert: {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "gateway.tls.cert: {}: no PEM certificate in the file",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("gateway.tls.key: {}: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs, key, &provider)
        .map(Arc::new)
        .map_err(|e| format!("gateway.tls: certificate and key do not fit together: {e}"))
}

/// Always the one certificate: shardgate serves one chain per TLS listener set.
#[derive(Debug)]
struct OneCert(CertKey);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<CertKey> {
        Some(self.0.clone())
    }
}

/// A shard's server config for `key`, speaking HTTP/1.1 (ALPN), TLS 1.2 and 1.3.
pub fn acceptor(key: &CertKey) -> Result<Acceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("gateway.tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneCert(key.clone())));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Acceptor::from(Arc::new(cfg)))
}
