//! TLS on the node's gRPC port (issue 16): the accept side, the member check of a peer
//! certificate, and the client configuration of this node's own connections to its peers.
//!
//! This module owns the node's certificate material once it is loaded ([`NodeTls`]) and the
//! decision "which member, if any, is this connection authenticated as" ([`ConnInfo::member`]).
//!
//! One port serves clients (the etcd API, the Operator service) and peers (the Raft service), so
//! the handshake accepts a client certificate chaining to the peer CA *or* to the client CA, and
//! the Raft service then asks the connection who it is:
//! - a member is a certificate that chains to the **peer CA** and is valid for the DNS name
//!   [`member_name`] (`raftlog-node-<id>`) of a node in the config, or of a node added at run
//!   time (the id is read from the certificate's names); it is worked out once per
//!   connection, right after the handshake, with rustls's own verifier crate (webpki);
//! - anything else (no certificate, a client certificate of the same CA without a member name)
//!   is a client: the etcd API serves it, the Raft service refuses it (`PermissionDenied`).
//!
//! Invariants:
//! - a connection reaches tonic only after a completed handshake, within
//!   `tls.handshake_timeout_ms`; handshakes run on tasks of their own, so a slow or silent client
//!   delays nobody else's accept;
//! - the :authority repair ([`crate::grpc::authority`]) wraps the *decrypted* stream (it parses
//!   HTTP/2 frames), which is why the accept side does its own handshake instead of tonic's
//!   `tls_config`;
//! - the server offers ALPN `h2` only (grpc-go, and so etcdctl, requires it);
//! - this node's outgoing connections to a peer verify the peer's certificate against the peer CA
//!   *for that peer's member name*, so a node never sends Raft messages to a host that is not
//!   the member it meant, and present this node's own certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls;

use crate::config::{ClusterConfig, TlsSettings};
use crate::types::NodeId;

/// The DNS name a member's certificate must carry (as a subjectAltName) to be taken for node
/// `id`: peers check it on the server they dial, and servers on the client certificate of a
/// connection that sends Raft messages.
pub fn member_name(id: NodeId) -> String {
    format!("{MEMBER_NAME_PREFIX}{}", id.0)
}

/// [`member_name`] before the node id.
const MEMBER_NAME_PREFIX: &str = "raftlog-node-";

/// Errors loading the certificate material; each names the file and the configuration field.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{field}: cannot read {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tls.{field}: {} holds no PEM certificate", path.display())]
    NoCertificate { field: &'static str, path: PathBuf },
    #[error("tls.{field}: {} holds no PEM private key ({reason})", path.display())]
    NoKey {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("tls.{field}: {}: {message}", path.display())]
    BadCertificate {
        field: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("tls: {0}")]
    Rustls(String),
}

/// The node's TLS material, loaded and checked at startup.
pub struct NodeTls {
    server: Arc<rustls::ServerConfig>,
    /// Trust anchors of the peer CA, for [`NodeTls::identify`].
    peer_anchors: Vec<TrustAnchor<'static>>,
    members: Vec<NodeId>,
    handshake_timeout: Duration,
    client_cert_auth: bool,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    peer_ca_pem: Vec<u8>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("NodeTls")
            .field("members", &self.members)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(
    field: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertificate {
            field,
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            field,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn root_store(
    field: &'static str,
    path: &Path,
    certs: &[CertificateDer<'static>],
) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::BadCertificate {
                field,
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    }
    Ok(roots)
}

/// *ring*, the provider tonic's `tls-ring` feature builds with: one crypto library in the
/// binary, and no C toolchain (cmake) in the build as aws-lc-rs would need. rustls 0.23.48
/// deprecates it for lacking post-quantum key exchange; switching to aws-lc-rs (tonic's
/// `tls-aws-lc`) is a change of this function and the features in Cargo.toml.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl NodeTls {
    /// Reads and checks the files `settings` names for node `local` of `config`.
    ///
    /// # Errors
    /// [`TlsError`] naming the field and file that cannot be read or holds no usable PEM.
    pub fn load(
        settings: &TlsSettings,
        config: &ClusterConfig,
        local: NodeId,
    ) -> Result<NodeTls, TlsError> {
        let cert_path = TlsSettings::path_for(&settings.cert_file, local.0);
        let key_path = TlsSettings::path_for(&settings.key_file, local.0);
        let peer_ca_path = TlsSettings::path_for(&settings.peer_ca_file, local.0);
        let cert_pem = read("cert_file", &cert_path)?;
        let key_pem = read("key_file", &key_path)?;
        let peer_ca_pem = read("peer_ca_file", &peer_ca_path)?;
        let chain = certificates("cert_file", &cert_path, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
            field: "key_file",
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let peer_ca = certificates("peer_ca_file", &peer_ca_path, &peer_ca_pem)?;
        let mut roots = root_store("peer_ca_file", &peer_ca_path, &peer_ca)?;
        if let Some(client_ca) = &settings.client_ca_file {
            let path = TlsSettings::path_for(client_ca, local.0);
            let pem = read("client_ca_file", &path)?;
            let certs = certificates("client_ca_file", &path, &pem)?;
            roots
                .roots
                .extend(root_store("client_ca_file", &path, &certs)?.roots);
        }
        let peer_anchors = peer_ca
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| TlsError::BadCertificate {
                        field: "peer_ca_file",
                        path: peer_ca_path.clone(),
                        message: format!("{e:?}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A certificate that is presented must chain to one of the CAs. A connection without
        // one completes its handshake even with client_cert_auth on: the server then answers
        // every RPC on it UNAUTHENTICATED with a message saying why ([`NodeTls::requires_client_cert`]),
        // because a handshake failure reaches etcdctl 3.4's user only as "context deadline
        // exceeded".
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Rustls(format!("client certificate verifier: {e}")))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::BadCertificate {
                field: "cert_file",
                path: cert_path.clone(),
                message: format!("does not match tls.key_file {}: {e}", key_path.display()),
            })?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(NodeTls {
            server: Arc::new(server),
            peer_anchors,
            members: config.nodes.iter().map(|n| n.id()).collect(),
            handshake_timeout: Duration::from_millis(settings.handshake_timeout_ms),
            client_cert_auth: settings.client_cert_auth,
            cert_pem,
            key_pem,
            peer_ca_pem,
        })
    }

    /// `tls.client_cert_auth`: a connection without a (verified) client certificate is answered
    /// UNAUTHENTICATED on every RPC.
    pub fn requires_client_cert(&self) -> bool {
        self.client_cert_auth
    }

    /// The member a verified client certificate chain authenticates, if any: the chain must
    /// lead to the peer CA (a certificate of the client CA is never a member) and the leaf
    /// must be valid for a member's [`member_name`].
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> Option<NodeId> {
        let (leaf, intermediates) = chain.split_first()?;
        let leaf = webpki::EndEntityCert::try_from(leaf).ok()?;
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.peer_anchors,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .ok()?;
        // Candidates: the config file's members, then any member name the certificate
        // carries, since a member added at run time (`etcdctl member add`, `--join`) is in no
        // config file; whether a node may send Raft messages at all is the gate's question (the
        // configuration in effect), not this one. Each candidate is verified by webpki's own
        // name check, never by comparing the strings.
        let named = leaf
            .valid_dns_names()
            .filter_map(|name| name.strip_prefix(MEMBER_NAME_PREFIX)?.parse::<u32>().ok())
            .filter(|&id| id != 0)
            .map(NodeId);
        let candidates: Vec<NodeId> = self.members.iter().copied().chain(named).collect();
        candidates.into_iter().find(|&id| {
            ServerName::try_from(member_name(id))
                .is_ok_and(|name| leaf.verify_is_valid_for_subject_name(&name).is_ok())
        })
    }

    /// The client side of a connection to `peer`: trust the peer CA only, expect the peer's
    /// member name, present this node's certificate.
    pub fn client_config(&self, peer: NodeId) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.peer_ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .domain_name(member_name(peer))
    }
}

/// What the Raft service learns about the connection a request came on (tonic puts it in every
/// request's extensions).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The connection is TLS.
    pub tls: bool,
    /// The client presented a certificate, and it chains to one of the configured CAs.
    pub client_cert: bool,
    /// The member its client certificate authenticates ([`NodeTls::identify`]).
    pub member: Option<NodeId>,
}

/// An accepted connection, plaintext or TLS.
pub enum ServerIo {
    Plain(TcpStream, SocketAddr),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, ConnInfo),
}

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        match self {
            ServerIo::Plain(_, remote) => ConnInfo {
                remote: Some(*remote),
                tls: false,
                client_cert: false,
                member: None,
            },
            ServerIo::Tls(_, info) => info.clone(),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(s, _) => s.is_write_vectored(),
            ServerIo::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// Connections whose handshake is done and that tonic has not taken yet.
const ACCEPTED_QUEUE: usize = 64;
/// One log line per this long per remote IP for failed handshakes (a port scan or a
/// misconfigured client retrying every few ms must not flood the log).
const HANDSHAKE_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Remote addresses remembered for that rate limit (forgotten all at once beyond this).
const LOGGED_ADDRESSES_MAX: usize = 1024;

/// Accepts connections on `listener` (with TCP_NODELAY: Raft messages are small and
/// latency-bound), completes the TLS handshake when `tls` is set, and yields the connections
/// tonic serves. The accept task ends when the returned stream is dropped (server shutdown).
pub fn incoming(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<NodeTls>>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<ServerIo>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(accept_loop(listener, tls, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Whether the first bytes the client sent are HTTP/2's plaintext preface (`PRI * HTTP/2.0`);
/// `false` for anything else (a TLS record starts with 0x16) or a closed connection.
async fn starts_with_http2_preface(stream: &TcpStream) -> bool {
    const START: &[u8] = b"PRI * HTTP";
    let mut buf = [0u8; START.len()];
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if buf[..n] != START[..n] => return false,
            Ok(n) if n == START.len() => return true,
            // A prefix so far: wait for more bytes.
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<NodeTls>>,
    tx: mpsc::Sender<std::io::Result<ServerIo>>,
) {
    let acceptor = tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(Arc::clone(&t.server)));
    let logged: Arc<Mutex<HashMap<std::net::IpAddr, Instant>>> = Arc::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // The server stopped taking connections: release the port.
            _ = tx.closed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: not fatal, and not worth a busy loop.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (Some(acceptor), Some(tls)) = (&acceptor, &tls) else {
            if tx.send(Ok(ServerIo::Plain(stream, remote))).await.is_err() {
                return;
            }
            continue;
        };
        let acceptor = acceptor.clone();
        let tls = Arc::clone(tls);
        let tx = tx.clone();
        let logged = Arc::clone(&logged);
        tokio::spawn(async move {
            // A plaintext HTTP/2 client (its preface, not a TLS record, comes first) gets its
            // connection served in plaintext, where every RPC is refused with a message saying
            // the node wants TLS (front.rs, `TlsPolicy`): at once, instead of a handshake
            // failure the client retries until its deadline ("context deadline exceeded").
            if let Ok(true) =
                tokio::time::timeout(tls.handshake_timeout, starts_with_http2_preface(&stream))
                    .await
            {
                let _ = tx.send(Ok(ServerIo::Plain(stream, remote))).await;
                return;
            }
            let failure =
                match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let chain = stream.get_ref().1.peer_certificates();
                        let info = ConnInfo {
                            remote: Some(remote),
                            tls: true,
                            client_cert: chain.is_some_and(|c| !c.is_empty()),
                            member: chain.and_then(|chain| tls.identify(chain)),
                        };
                        let _ = tx.send(Ok(ServerIo::Tls(Box::new(stream), info))).await;
                        return;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no handshake within {:?}", tls.handshake_timeout),
                };
            let now = Instant::now();
            let mut logged = logged.lock().unwrap_or_else(PoisonError::into_inner);
            let due = logged
                .get(&remote.ip())
                .is_none_or(|at| now.duration_since(*at) >= HANDSHAKE_LOG_INTERVAL);
            if due {
                if logged.len() >= LOGGED_ADDRESSES_MAX {
                    logged.clear();
                }
                logged.insert(remote.ip(), now);
                tracing::warn!(
                    %remote,
                    "TLS handshake refused: {failure} (a plaintext client, or a certificate that \
                     does not chain to the configured CA; further failures from this address are \
                     not logged for {}s)",
                    HANDSHAKE_LOG_INTERVAL.as_secs()
                );
            }
        });
    }
}
