//! Certificates made inside the tests and the bench (rcgen), and the matching `tls:` section:
//! one CA, a certificate per node (DNS SAN `raftlog-node-<id>` and IP SAN 127.0.0.1, server and
//! client use), and a client certificate of the same CA that names no member.
#![allow(dead_code)] // Each binary uses a different part.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A CA that signs leaf certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, key PEM) for `names` (DNS names or IP addresses).
    pub fn leaf(&self, common_name: &str, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `<dir>/certs/`: `ca<id>.pem` (each node's peer CA), `node<id>.pem`/`-key.pem`, and
/// `client.pem`/`client-key.pem`. Node `rogue`, if any, gets a certificate of `other` and trusts
/// only `other`.
pub fn write_certs(dir: &Path, ca: &Ca, rogue: Option<(u32, &Ca)>) {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    for id in 1..=3u32 {
        let issuer = match rogue {
            Some((r, other)) if r == id => other,
            _ => ca,
        };
        let name = format!("raftlog-node-{id}");
        let (cert, key) = issuer.leaf(&name, &[&name, "127.0.0.1"]);
        std::fs::write(certs.join(format!("node{id}.pem")), cert).expect("write");
        std::fs::write(certs.join(format!("node{id}-key.pem")), key).expect("write");
        std::fs::write(certs.join(format!("ca{id}.pem")), issuer.pem()).expect("write");
    }
    let (cert, key) = ca.leaf("client", &["client"]);
    std::fs::write(certs.join("client.pem"), cert).expect("write");
    std::fs::write(certs.join("client-key.pem"), key).expect("write");
    std::fs::write(certs.join("ca.pem"), ca.pem()).expect("write");
}

/// The `tls:` section of these tests (after the harness's cluster_settings).
pub fn tls_section(client_cert_auth: bool) -> String {
    format!(
        "tls:\n  cert_file: \"certs/node{{id}}.pem\"\n  key_file: \"certs/node{{id}}-key.pem\"\n  \
         peer_ca_file: \"certs/ca{{id}}.pem\"\n  client_cert_auth: {client_cert_auth}\n  \
         handshake_timeout_ms: 3000\n"
    )
}

/// The test's client identity: the CA, and the client certificate (not a member's).
pub fn client_tls(dir: &Path) -> ClientTlsConfig {
    let certs = dir.join("certs");
    let read = |name: &str| std::fs::read(certs.join(name)).expect("read cert");
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read("client.pem"),
            read("client-key.pem"),
        ))
}
