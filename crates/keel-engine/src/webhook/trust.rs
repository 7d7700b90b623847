//! The certificates HTTPS sinks are verified against: the system's roots (as
//! `rustls-native-certs` finds them: the platform store, or `SSL_CERT_FILE` / `SSL_CERT_DIR`),
//! and the certificate authorities of a configured PEM bundle, for sinks behind a private CA.
//!
//! Loaded once when the engine opens, so each sink client is built from memory.

use std::path::Path;

use reqwest::Certificate;

/// The roots of the system and those of `ca_bundle`. The error says what is wrong with the
/// bundle; a system without roots is not an error (sinks behind a bundle's CA still work),
/// it is logged.
pub(crate) fn load_roots(ca_bundle: Option<&Path>) -> Result<Vec<Certificate>, String> {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "could not load some of the system's root certificates");
    }
    let mut roots: Vec<Certificate> = native
        .certs
        .iter()
        .filter_map(|der| Certificate::from_der(der).ok())
        .collect();
    if roots.is_empty() {
        tracing::warn!(
            "no system root certificates found: HTTPS sinks verify only against webhooks.ca_bundle"
        );
    }
    let system_count = roots.len();
    if let Some(path) = ca_bundle {
        roots.extend(bundle(path)?);
    }
    let roots = usable(roots);
    tracing::debug!(
        system = system_count,
        total = roots.len(),
        "root certificates for HTTPS sinks"
    );
    Ok(roots)
}

/// The certificates of a PEM bundle file: at least one, every one usable as a root.
fn bundle(path: &Path) -> Result<Vec<Certificate>, String> {
    // Errors name the setting: they stop the engine from opening.
    let shown = format!("(webhooks.ca_bundle) {}", path.display());
    let pem = std::fs::read(path)
        .map_err(|error| format!("cannot read the CA bundle {shown}: {error}"))?;
    let certificates = Certificate::from_pem_bundle(&pem)
        .map_err(|error| format!("the CA bundle {shown} is not valid PEM: {error}"))?;
    if certificates.is_empty() {
        return Err(format!(
            "the CA bundle {shown} holds no certificate (expected PEM blocks \
             \"-----BEGIN CERTIFICATE-----\")"
        ));
    }
    for (index, certificate) in certificates.iter().enumerate() {
        if client_with(std::slice::from_ref(certificate)).is_err() {
            return Err(format!(
                "certificate {} of the CA bundle {shown} is not a usable root certificate",
                index + 1
            ));
        }
    }
    Ok(certificates)
}

/// The certificates a client accepts as roots. System stores may hold a certificate rustls
/// cannot read, which would make every client fail to build: those are dropped (checked one
/// by one only when the whole set fails).
fn usable(roots: Vec<Certificate>) -> Vec<Certificate> {
    if client_with(&roots).is_ok() {
        return roots;
    }
    roots
        .into_iter()
        .filter(|root| client_with(std::slice::from_ref(root)).is_ok())
        .collect()
}

/// A client trusting `roots`, built only to see whether they are accepted.
fn client_with(roots: &[Certificate]) -> reqwest::Result<reqwest::Client> {
    roots
        .iter()
        .fold(reqwest::Client::builder(), |builder, root| {
            builder.add_root_certificate(root.clone())
        })
        .build()
}
