//! TLS for the API: rustls (ring), with a certificate chain and a key from PEM files,
//! read again on SIGHUP.
//!
//! A reload swaps the configuration new handshakes use; connections open at the time keep
//! theirs, so none is dropped. A reload that fails (a missing file, a key that does not
//! match) is logged and changes nothing: keel goes on with the certificate it had.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The certificate and key files of the API's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the certificate, then the intermediates of its chain.
    pub cert: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The TLS the listener hands each new connection to.
pub(crate) struct Tls {
    files: TlsFiles,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Reads the files; the error names the file and what is wrong.
    pub(crate) fn load(files: TlsFiles) -> Result<Tls, String> {
        let acceptor = acceptor(&files)?;
        Ok(Tls {
            files,
            acceptor: RwLock::new(acceptor),
        })
    }

    /// What new handshakes use.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().expect("TLS lock").clone()
    }

    /// Reads the files again; on failure keeps what it had.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let acceptor = acceptor(&self.files)?;
        *self.acceptor.write().expect("TLS lock") = acceptor;
        Ok(())
    }

    /// Reloads on each SIGHUP, for as long as the process runs.
    pub(crate) fn reload_on_sighup(self: &Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let tls = Arc::downgrade(self);
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the TLS certificate is read at start only");
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let Some(tls) = tls.upgrade() else { return };
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %tls.files.cert.display(), "SIGHUP: TLS certificate and key read again; new connections use them")
                    }
                    Err(error) => {
                        tracing::error!(%error, "SIGHUP: cannot read the TLS certificate and key; keeping the ones in use")
                    }
                }
            }
        });
    }
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|error| {
        format!(
            "TLS key {}: {error} (a PEM private key is expected)",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| {
            format!(
                "TLS certificate {} and key {}: {error}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificates of a PEM file: at least one.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let invalid = |detail: String| format!("TLS certificate {}: {detail}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| invalid(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(error.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}
