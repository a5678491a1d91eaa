//! `scheme: https` upstreams: the connection type a pool holds, and the rustls client configs.
//!
//! The control side builds one `ClientConfig` per upstream (roots, client certificate, verifier)
//! when a config is published; each shard clones it with its own session-resumption store, so
//! the store's lock inside rustls is never contended across cores.

use std::sync::Arc;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio_rustls::ClientTlsStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{Pem, UpstreamTls};

/// An upstream connection: plain TCP or TLS. An enum (not a generic) so the exchange is compiled
/// once; the TLS branch boxes its futures and its state, as `proxy::stream::ClientStream` does,
/// so the plain path's futures do not grow.
pub enum UpStream {
    Plain(TcpStream),
    Tls(Box<ClientTlsStream<TcpStream>>),
}

impl AsyncReadRent for UpStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.read(buf).await,
            UpStream::Tls(s) => Box::pin(s.read(buf)).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.readv(buf).await,
            UpStream::Tls(s) => Box::pin(s.readv(buf)).await,
        }
    }
}

impl AsyncWriteRent for UpStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.write(buf).await,
            UpStream::Tls(s) => Box::pin(s.write(buf)).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Plain(s) => s.writev(buf).await,
            UpStream::Tls(s) => Box::pin(s.writev(buf)).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UpStream::Plain(s) => s.flush().await,
            UpStream::Tls(s) => Box::pin(s.flush()).await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            UpStream::Plain(s) => s.shutdown().await,
            UpStream::Tls(s) => Box::pin(s.shutdown()).await,
        }
    }
}

/// What a shard needs to open TLS connections for one upstream.
#[derive(Clone)]
pub struct TlsSpec {
    pub config: Arc<ClientConfig>,
    /// SNI and the name verified for every node: `upstream_host` with `pass_host: rewrite`;
    /// otherwise each node's host.
    pub server_name: Option<ServerName<'static>>,
}

/// The shard's connector: the upstream's config with a session cache of its own.
pub fn shard_connector(spec: &TlsSpec) -> monoio_rustls::TlsConnector {
    let mut cfg = (*spec.config).clone();
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(256);
    monoio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Builds an upstream's client config; `path` prefixes error messages (`upstreams[0].tls`).
/// `system_roots` is called at most once, only when the system store is needed.
pub fn client_config(
    tls: &UpstreamTls,
    path: &str,
    system_roots: &mut dyn FnMut() -> Arc<RootCertStore>,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{path}: {e}"))?;
    let builder = if !tls.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else if let Some(ca) = &tls.ca_cert {
        let mut roots = RootCertStore::empty();
        for cert in certs(ca, &format!("{path}.ca_cert"))? {
            roots
                .add(cert)
                .map_err(|e| format!("{path}.ca_cert: {e}"))?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder.with_root_certificates(system_roots())
    };
    let mut cfg = match &tls.client_cert {
        Some((cert, key)) => {
            let chain = certs(cert, &format!("{path}.client_cert"))?;
            let key = private_key(key, &format!("{path}.client_key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{path}.client_cert: does not fit client_key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The reason a handshake failed, as rustls names it (monoio-rustls's own Display says only
/// "io error"/"rustls error"): e.g. "invalid peer certificate: NotValidForName".
pub fn describe(e: monoio_rustls::TlsError) -> String {
    match e {
        monoio_rustls::TlsError::Rustls(e) => e.to_string(),
        monoio_rustls::TlsError::Io(e) => match e.get_ref() {
            Some(inner) => inner.to_string(),
            None => e.to_string(),
        },
    }
}

/// The system's trusted roots (read once per published config).
pub fn load_system_roots() -> Arc<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading the system's trusted certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            ignored,
            "no system trusted certificates found: https upstreams need tls.ca_cert or tls.verify: false"
        );
    }
    Arc::new(roots)
}

fn certs(pem: &Pem, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = match pem {
        Pem::Inline(text) => CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{path}: {e}"))?,
        Pem::File(file) => CertificateDer::pem_file_iter(file)
            .map_err(|e| format!("{path}: {}: {e}", file.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{path}: {}: {e}", file.display()))?,
    };
    if certs.is_empty() {
        return Err(format!("{path}: no PEM certificate"));
    }
    Ok(certs)
}

fn private_key(pem: &Pem, path: &str) -> Result<PrivateKeyDer<'static>, String> {
    use rustls_pki_types::pem::PemObject;
    match pem {
        Pem::Inline(text) => {
            PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| format!("{path}: {e}"))
        }
        Pem::File(file) => PrivateKeyDer::from_pem_file(file)
            .map_err(|e| format!("{path}: {}: {e}", file.display())),
    }
}

/// `tls.verify: false`: any certificate is accepted, but the handshake signatures are still
/// checked (the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
