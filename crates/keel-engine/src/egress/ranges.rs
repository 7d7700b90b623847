//! The address ranges the egress policy knows, and which level denies each.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Cloud metadata services: they hand out the host's credentials to whoever asks. Most are
/// link-local too; these are named so the refusal says what is at stake, and the others
/// (Alibaba's in the shared range, Azure's in a public range, AWS's and Google's IPv6 in the
/// unique local range) are denied by the standard policy only because they are listed here.
const METADATA_V4: [Ipv4Addr; 5] = [
    // AWS, Google Cloud, Azure, Oracle Cloud, DigitalOcean, OpenStack…
    Ipv4Addr::new(169, 254, 169, 254),
    // AWS ECS task metadata and credentials.
    Ipv4Addr::new(169, 254, 170, 2),
    // Alibaba Cloud.
    Ipv4Addr::new(100, 100, 100, 200),
    // Azure's WireServer (host agent), a public address.
    Ipv4Addr::new(168, 63, 129, 16),
    // Oracle Cloud's older metadata address.
    Ipv4Addr::new(192, 0, 0, 192),
];
const METADATA_V6: [Ipv6Addr; 2] = [
    // AWS instance metadata over IPv6.
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    // Google Cloud's metadata server over IPv6.
    Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
];

/// The range of an address the egress policy may deny. Addresses in none of them are
/// public, and every policy allows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// A cloud metadata service (169.254.169.254, fd00:ec2::254…). Denied by `standard`.
    CloudMetadata,
    /// Unspecified or "this network" (0.0.0.0/8, ::): Linux connects it to the host itself.
    /// Denied by `standard`.
    Unspecified,
    /// Link-local (169.254.0.0/16, fe80::/10). Denied by `standard`.
    LinkLocal,
    /// Multicast (224.0.0.0/4, ff00::/8). Denied by `standard`.
    Multicast,
    /// The limited broadcast address 255.255.255.255. Denied by `standard`.
    Broadcast,
    /// Reserved for future use (240.0.0.0/4). Denied by `standard`.
    Reserved,
    /// Loopback (127.0.0.0/8, ::1): keel's own host. Denied by `strict`.
    Loopback,
    /// Private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16). Denied by `strict`.
    Private,
    /// Shared address space of carrier-grade NAT (100.64.0.0/10). Denied by `strict`.
    Shared,
    /// Unique local (fc00::/7) or the deprecated site-local (fec0::/10). Denied by `strict`.
    UniqueLocal,
    /// IETF protocol assignments (192.0.0.0/24), benchmarking (198.18.0.0/15), documentation
    /// (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), discard-only
    /// (100::/64), local-use NAT64 (64:ff9b:1::/48): not public. Denied by `strict`.
    SpecialPurpose,
}

impl AddressClass {
    /// The range of `address`, or none for a public address. An IPv6 address carrying an
    /// IPv4 one ([`embedded_ipv4`]) has the IPv4 address's range.
    pub fn of(address: IpAddr) -> Option<AddressClass> {
        match address {
            IpAddr::V4(address) => class_v4(address),
            IpAddr::V6(address) => match embedded_ipv4(address) {
                Some(carried) => class_v4(carried),
                None => class_v6(address),
            },
        }
    }

    /// Whether the `standard` policy denies it (`strict` denies every class).
    pub fn denied_by_standard(self) -> bool {
        !matches!(
            self,
            AddressClass::Loopback
                | AddressClass::Private
                | AddressClass::Shared
                | AddressClass::UniqueLocal
                | AddressClass::SpecialPurpose
        )
    }

    /// What it is, for a refusal: `a cloud metadata address`, `loopback`.
    pub fn description(self) -> &'static str {
        match self {
            AddressClass::CloudMetadata => "a cloud metadata address",
            AddressClass::Unspecified => "unspecified (this host)",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Reserved => "reserved",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::Shared => "in the shared (carrier-grade NAT) range",
            AddressClass::UniqueLocal => "unique local",
            AddressClass::SpecialPurpose => "a special-purpose address, not public",
        }
    }
}

/// The IPv4 address an IPv6 address carries, in the forms that reach it: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated; not `::` nor `::1`), the
/// well-known NAT64 prefix (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::/48`).
pub fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = address.segments();
    let low = Ipv4Addr::new(
        (segments[6] >> 8) as u8,
        segments[6] as u8,
        (segments[7] >> 8) as u8,
        segments[7] as u8,
    );
    match segments {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, high, low_half, ..] => Some(Ipv4Addr::new(
            (high >> 8) as u8,
            high as u8,
            (low_half >> 8) as u8,
            low_half as u8,
        )),
        _ => None,
    }
}

fn class_v4(address: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = address.octets();
    let class = if METADATA_V4.contains(&address) {
        AddressClass::CloudMetadata
    } else if a == 0 {
        AddressClass::Unspecified
    } else if address.is_link_local() {
        AddressClass::LinkLocal
    } else if address.is_multicast() {
        AddressClass::Multicast
    } else if address.is_broadcast() {
        AddressClass::Broadcast
    } else if a >= 240 {
        AddressClass::Reserved
    } else if address.is_loopback() {
        AddressClass::Loopback
    } else if address.is_private() {
        AddressClass::Private
    } else if a == 100 && (64..128).contains(&b) {
        AddressClass::Shared
    } else if (a, b, c) == (192, 0, 0)
        || (a == 198 && (18..20).contains(&b))
        || address.is_documentation()
    {
        AddressClass::SpecialPurpose
    } else {
        return None;
    };
    Some(class)
}

fn class_v6(address: Ipv6Addr) -> Option<AddressClass> {
    let segments = address.segments();
    let class = if METADATA_V6.contains(&address) {
        AddressClass::CloudMetadata
    } else if address.is_unspecified() {
        AddressClass::Unspecified
    } else if segments[0] & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if address.is_multicast() {
        AddressClass::Multicast
    } else if address.is_loopback() {
        AddressClass::Loopback
    } else if segments[0] & 0xfe00 == 0xfc00 || segments[0] & 0xffc0 == 0xfec0 {
        AddressClass::UniqueLocal
    } else if segments[..2] == [0x2001, 0xdb8]
        || segments[..4] == [0x100, 0, 0, 0]
        || segments[..3] == [0x64, 0xff9b, 1]
    {
        AddressClass::SpecialPurpose
    } else {
        return None;
    };
    Some(class)
}
