//! Where keel's outgoing HTTP requests may go: the egress policy of push sinks, their health
//! checks and their validation handshakes (server-side request forgery protection).
//!
//! A sink URL is chosen by whoever may create a subscription, so without a policy keel would
//! send requests for them to addresses only keel can reach: a cloud metadata service that
//! hands out credentials, or in a multi-tenant setup the other services beside keel.
//!
//! The policy is checked on the **addresses a connection is made to**, after DNS resolution,
//! on every new connection (`resolver.rs`): the sink client's resolver resolves, then drops
//! the denied addresses, and refuses when none is left; a URL whose host is an IP address
//! (which skips the resolver) is checked before each request ([`EgressPolicy::check_url`]).
//! A name that resolves to a public address once and to a private one the next time (DNS
//! rebinding) gains nothing: each connection is checked on the address it uses. Sink clients
//! ignore `HTTP_PROXY` and the like, so no proxy resolves names behind the policy's back.
//!
//! The levels ([`EgressPolicy`]): `standard` (the default) denies link-local, cloud metadata,
//! unspecified, multicast, broadcast and reserved addresses; `strict` also denies loopback,
//! private (RFC 1918), shared (CGNAT), unique local and other non-public ranges, for setups
//! where tenants must not reach keel's neighbours; `open` denies nothing. IPv6 forms that
//! carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are judged by the IPv4
//! address they carry.

mod ranges;
mod resolver;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;

pub use ranges::{AddressClass, embedded_ipv4};
pub use resolver::{GuardedResolver, HostLookup, HostsTable, Lookup, ResolveError, SystemLookup};

/// The config file key and flag that set the policy, named in refusals.
const SETTING: &str = "webhooks.egress (--webhook-egress)";

/// Which addresses sink requests may connect to. Serialises as `"standard"`, `"strict"` or
/// `"open"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressPolicy {
    /// Deny link-local, cloud metadata, unspecified, multicast, broadcast and reserved
    /// addresses; allow the rest, loopback and private ranges included.
    #[default]
    Standard,
    /// Public addresses only: also deny loopback, private, shared (CGNAT), unique local,
    /// documentation and benchmarking ranges. For multi-tenant setups.
    Strict,
    /// Deny nothing.
    Open,
}

impl EgressPolicy {
    /// Every policy, in the order of the addresses they allow, fewest last.
    pub const ALL: [EgressPolicy; 3] = [
        EgressPolicy::Open,
        EgressPolicy::Standard,
        EgressPolicy::Strict,
    ];

    /// The policy's name, as the config file spells it.
    pub fn name(self) -> &'static str {
        match self {
            EgressPolicy::Standard => "standard",
            EgressPolicy::Strict => "strict",
            EgressPolicy::Open => "open",
        }
    }

    /// Whether a connection to `address` is allowed; the refusal says why.
    pub fn check(self, address: IpAddr) -> Result<(), Denied> {
        let Some(class) = AddressClass::of(address) else {
            return Ok(());
        };
        let denied = match self {
            EgressPolicy::Open => false,
            EgressPolicy::Standard => class.denied_by_standard(),
            EgressPolicy::Strict => true,
        };
        if denied {
            return Err(Denied {
                address,
                host: None,
                class,
                policy: self,
            });
        }
        Ok(())
    }

    /// Checks a URL whose host is an IP address (such a host skips the resolver, so it is
    /// checked here, before each request); a URL with a host name passes, its addresses are
    /// checked when a connection is made.
    pub fn check_url(self, url: &reqwest::Url) -> Result<(), Denied> {
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        // An IPv6 host keeps its brackets in the URL's text.
        let bare = host
            .strip_prefix('[')
            .and_then(|host| host.strip_suffix(']'))
            .unwrap_or(host);
        match bare.parse() {
            Ok(address) => self.check(address),
            Err(_) => Ok(()),
        }
    }
}

impl fmt::Display for EgressPolicy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl std::str::FromStr for EgressPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EgressPolicy::ALL
            .into_iter()
            .find(|policy| policy.name() == text)
            .ok_or_else(|| {
                format!("the egress policy is \"standard\", \"strict\" or \"open\", not {text:?}")
            })
    }
}

/// A connection the egress policy refused: the address, the name it came from, its range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The address refused.
    pub address: IpAddr,
    /// The host name it was resolved from; none for an address in the URL.
    pub host: Option<String>,
    /// Its range.
    pub class: AddressClass,
    /// The policy that refused it.
    pub policy: EgressPolicy,
}

impl fmt::Display for Denied {
    /// `sink address 127.0.0.1 (from localhost) is loopback, denied by the strict egress
    /// policy; set webhooks.egress (--webhook-egress) to "standard" to allow it`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "sink address {}", self.address)?;
        if let IpAddr::V6(address) = self.address
            && let Some(carried) = ranges::embedded_ipv4(address)
        {
            write!(formatter, " (carrying {carried})")?;
        }
        if let Some(host) = &self.host {
            write!(formatter, " (from {host})")?;
        }
        let weaker = if self.class.denied_by_standard() {
            EgressPolicy::Open
        } else {
            EgressPolicy::Standard
        };
        write!(
            formatter,
            " is {}, denied by the {} egress policy; set {SETTING} to \"{weaker}\" to allow it",
            self.class.description(),
            self.policy
        )
    }
}

impl std::error::Error for Denied {}

/// Finds a refusal of the egress policy among an error's causes.
pub(crate) fn denial_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Denied> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(denied) = error.downcast_ref::<Denied>() {
            return Some(denied);
        }
        cause = error.source();
    }
    None
}
