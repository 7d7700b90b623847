//! The sink clients' DNS resolver: it resolves a host name, then keeps only the addresses the
//! egress policy allows. The HTTP client asks it for every new connection, so each connection
//! is made to an address checked at that moment (no rebinding window).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use super::{Denied, EgressPolicy};

/// A lookup's answer: the host's addresses.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Turns a host name into addresses. [`SystemLookup`] asks the operating system; a
/// [`HostsTable`] answers from a fixed table (tests point names at addresses with it).
pub trait HostLookup: fmt::Debug + Send + Sync + 'static {
    /// The addresses of `host`, or why there are none.
    fn lookup<'a>(&'a self, host: &'a str) -> Lookup<'a>;
}

/// The operating system's resolver (`getaddrinfo`, on a blocking thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl HostLookup for SystemLookup {
    fn lookup<'a>(&'a self, host: &'a str) -> Lookup<'a> {
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host, 0)).await?;
            Ok(addresses.map(|address| address.ip()).collect())
        })
    }
}

/// Names resolved from a fixed table, like `/etc/hosts`; a name not in it has no address.
#[derive(Debug, Clone, Default)]
pub struct HostsTable(BTreeMap<String, Vec<IpAddr>>);

impl HostsTable {
    /// An empty table.
    pub fn new() -> HostsTable {
        HostsTable::default()
    }

    /// The table with `host` resolving to `addresses`.
    pub fn with(mut self, host: &str, addresses: &[IpAddr]) -> HostsTable {
        self.0.insert(host.to_ascii_lowercase(), addresses.to_vec());
        self
    }
}

impl HostLookup for HostsTable {
    fn lookup<'a>(&'a self, host: &'a str) -> Lookup<'a> {
        let found = self.0.get(&host.to_ascii_lowercase()).cloned();
        Box::pin(async move {
            found.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host} is not in the hosts table"),
                )
            })
        })
    }
}

/// Resolves by a [`HostLookup`], then drops the addresses `policy` denies; with none left the
/// resolution fails with the first refusal ([`Denied`], naming the host).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: EgressPolicy,
    lookup: Arc<dyn HostLookup>,
}

impl GuardedResolver {
    /// A resolver for `policy` over `lookup`.
    pub fn new(policy: EgressPolicy, lookup: Arc<dyn HostLookup>) -> GuardedResolver {
        GuardedResolver { policy, lookup }
    }

    /// The policy it applies.
    pub fn policy(&self) -> EgressPolicy {
        self.policy
    }

    /// The allowed addresses of `host`, or why there are none.
    pub async fn resolve_allowed(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let addresses = self
            .lookup
            .lookup(host)
            .await
            .map_err(ResolveError::Lookup)?;
        let mut first_denial = None;
        let allowed: Vec<IpAddr> = addresses
            .into_iter()
            .filter(|&address| match self.policy.check(address) {
                Ok(()) => true,
                Err(denied) => {
                    first_denial.get_or_insert(Denied {
                        host: Some(host.to_owned()),
                        ..denied
                    });
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), first_denial) {
            (false, _) => Ok(allowed),
            (true, Some(denied)) => Err(ResolveError::Denied(denied)),
            (true, None) => Err(ResolveError::Lookup(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} has no address"),
            ))),
        }
    }
}

/// Why a resolution gave no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup failed.
    #[error("cannot resolve the sink's host: {0}")]
    Lookup(#[source] std::io::Error),
    /// Every address was denied by the egress policy.
    #[error(transparent)]
    Denied(Denied),
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            // Unwrapped, so that the refusal itself is among the connection error's causes.
            let allowed = match resolver.resolve_allowed(name.as_str()).await {
                Ok(allowed) => allowed,
                Err(ResolveError::Denied(denied)) => return Err(Box::new(denied) as _),
                Err(ResolveError::Lookup(error)) => return Err(Box::new(error) as _),
            };
            let addresses: reqwest::dns::Addrs = Box::new(
                allowed
                    .into_iter()
                    .map(|address| SocketAddr::new(address, 0)),
            );
            Ok(addresses)
        })
    }
}
