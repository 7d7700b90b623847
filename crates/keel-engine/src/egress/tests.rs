//! Tests of the egress policy: the ranges by table, the IPv6 forms of IPv4 addresses by
//! property, and the resolver with a hosts table (no network: nothing connects anywhere).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Allowed (`true`) under open, standard and strict, in that order.
type Verdicts = [bool; 3];
const PUBLIC: Verdicts = [true, true, true];
const NOT_PUBLIC: Verdicts = [true, true, false];
const DANGEROUS: Verdicts = [true, false, false];

// Goal: every range the policy knows is judged by the level the docs give it, public
// addresses pass every level, and IPv6 forms carrying an IPv4 address are judged by it.
// Method: a table of addresses with their range and verdict under each policy.
#[test]
fn each_range_is_denied_by_its_level() {
    use AddressClass::*;
    let table: &[(&str, Option<AddressClass>, Verdicts)] = &[
        ("93.184.215.14", None, PUBLIC),
        ("8.8.8.8", None, PUBLIC),
        ("2606:4700::1111", None, PUBLIC),
        ("169.254.169.254", Some(CloudMetadata), DANGEROUS),
        ("169.254.170.2", Some(CloudMetadata), DANGEROUS),
        ("100.100.100.200", Some(CloudMetadata), DANGEROUS),
        ("168.63.129.16", Some(CloudMetadata), DANGEROUS),
        ("fd00:ec2::254", Some(CloudMetadata), DANGEROUS),
        ("fd20:ce::254", Some(CloudMetadata), DANGEROUS),
        ("::ffff:169.254.169.254", Some(CloudMetadata), DANGEROUS),
        ("64:ff9b::a9fe:a9fe", Some(CloudMetadata), DANGEROUS),
        ("169.254.1.1", Some(LinkLocal), DANGEROUS),
        ("fe80::1", Some(LinkLocal), DANGEROUS),
        ("febf::1", Some(LinkLocal), DANGEROUS),
        ("0.0.0.0", Some(Unspecified), DANGEROUS),
        ("0.1.2.3", Some(Unspecified), DANGEROUS),
        ("::", Some(Unspecified), DANGEROUS),
        ("224.0.0.1", Some(Multicast), DANGEROUS),
        ("239.255.255.250", Some(Multicast), DANGEROUS),
        ("ff02::1", Some(Multicast), DANGEROUS),
        ("255.255.255.255", Some(Broadcast), DANGEROUS),
        ("240.0.0.1", Some(Reserved), DANGEROUS),
        ("127.0.0.1", Some(Loopback), NOT_PUBLIC),
        ("127.8.9.10", Some(Loopback), NOT_PUBLIC),
        ("::1", Some(Loopback), NOT_PUBLIC),
        ("::ffff:127.0.0.1", Some(Loopback), NOT_PUBLIC),
        ("::127.0.0.1", Some(Loopback), NOT_PUBLIC),
        ("64:ff9b::7f00:1", Some(Loopback), NOT_PUBLIC),
        ("2002:7f00:1::", Some(Loopback), NOT_PUBLIC),
        ("10.0.0.5", Some(Private), NOT_PUBLIC),
        ("172.16.0.1", Some(Private), NOT_PUBLIC),
        ("172.31.255.255", Some(Private), NOT_PUBLIC),
        ("192.168.1.1", Some(Private), NOT_PUBLIC),
        ("::ffff:10.1.2.3", Some(Private), NOT_PUBLIC),
        ("100.64.0.1", Some(Shared), NOT_PUBLIC),
        ("100.127.255.255", Some(Shared), NOT_PUBLIC),
        ("fc00::1", Some(UniqueLocal), NOT_PUBLIC),
        ("fd12:3456::1", Some(UniqueLocal), NOT_PUBLIC),
        ("fec0::1", Some(UniqueLocal), NOT_PUBLIC),
        ("192.0.0.8", Some(SpecialPurpose), NOT_PUBLIC),
        ("198.18.0.1", Some(SpecialPurpose), NOT_PUBLIC),
        ("192.0.2.1", Some(SpecialPurpose), NOT_PUBLIC),
        ("203.0.113.9", Some(SpecialPurpose), NOT_PUBLIC),
        ("2001:db8::1", Some(SpecialPurpose), NOT_PUBLIC),
        ("100::1", Some(SpecialPurpose), NOT_PUBLIC),
        ("64:ff9b:1::1", Some(SpecialPurpose), NOT_PUBLIC),
        // Edges just outside the ranges.
        ("172.32.0.1", None, PUBLIC),
        ("100.128.0.1", None, PUBLIC),
        ("100.63.255.255", None, PUBLIC),
        ("198.20.0.1", None, PUBLIC),
        ("223.255.255.255", None, PUBLIC),
        ("fe00::1", None, PUBLIC),
    ];
    for &(text, class, verdicts) in table {
        let address = ip(text);
        assert_eq!(AddressClass::of(address), class, "{text}");
        for (policy, allowed) in EgressPolicy::ALL.into_iter().zip(verdicts) {
            let checked = policy.check(address);
            assert_eq!(
                checked.is_ok(),
                allowed,
                "{text} under {policy}: {checked:?}"
            );
        }
    }
}

// Goal: a refusal names the address, the name it came from, the range, the policy and the
// setting to change, and shows the IPv4 address an IPv6 form carries.
#[test]
fn refusals_say_what_and_how_to_allow() {
    let mut denied = EgressPolicy::Strict.check(ip("127.0.0.1")).unwrap_err();
    denied.host = Some("localhost".to_owned());
    assert_eq!(
        denied.to_string(),
        "sink address 127.0.0.1 (from localhost) is loopback, denied by the strict egress \
         policy; set webhooks.egress (--webhook-egress) to \"standard\" to allow it"
    );
    let denied = EgressPolicy::Standard
        .check(ip("::ffff:169.254.169.254"))
        .unwrap_err();
    assert_eq!(
        denied.to_string(),
        "sink address ::ffff:169.254.169.254 (carrying 169.254.169.254) is a cloud metadata \
         address, denied by the standard egress policy; set webhooks.egress (--webhook-egress) \
         to \"open\" to allow it"
    );
}

// Goal: a URL whose host is an address, in any spelling the URL parser reads as one, is
// checked; a host name passes (its addresses are checked at connection).
#[test]
fn urls_with_address_hosts_are_checked() {
    let strict = EgressPolicy::Strict;
    for denied in [
        "http://127.0.0.1:8080/x",
        "http://[::1]/",
        "http://[::ffff:7f00:1]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://127.1/",
        "https://10.0.0.5/hooks",
    ] {
        let url = reqwest::Url::parse(denied).unwrap();
        assert!(strict.check_url(&url).is_err(), "{denied}");
    }
    for passed in [
        "http://localhost/",
        "https://example.com/x",
        "http://8.8.8.8/",
    ] {
        let url = reqwest::Url::parse(passed).unwrap();
        assert!(strict.check_url(&url).is_ok(), "{passed}");
    }
}

// Goal: policy names round-trip through their text, and a wrong one lists the right ones.
#[test]
fn policy_names_round_trip() {
    for policy in EgressPolicy::ALL {
        assert_eq!(policy.name().parse::<EgressPolicy>(), Ok(policy));
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(json, format!("\"{policy}\""));
    }
    let error = "lenient".parse::<EgressPolicy>().unwrap_err();
    assert!(error.contains("\"strict\""), "{error}");
}

proptest! {
    // Goal: an IPv4 address in any IPv6 form that reaches it (mapped, NAT64, 6to4, and the
    // compatible form beside `::` and `::1`) gets the IPv4 address's verdict under every
    // policy, so no range can be reached by spelling it in IPv6.
    #[test]
    fn ipv6_forms_of_an_ipv4_address_get_its_verdict(octets in any::<[u8; 4]>()) {
        let v4 = Ipv4Addr::from(octets);
        let [a, b, c, d] = octets.map(u16::from);
        let mut forms = vec![
            v4.to_ipv6_mapped(),
            Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, (a << 8) | b, (c << 8) | d),
            Ipv6Addr::new(0x2002, (a << 8) | b, (c << 8) | d, 0, 0, 0, 0, 1),
        ];
        if u32::from(v4) > 1 {
            forms.push(v4.to_ipv6_compatible());
        }
        for form in forms {
            prop_assert_eq!(embedded_ipv4(form), Some(v4));
            for policy in EgressPolicy::ALL {
                prop_assert_eq!(
                    policy.check(IpAddr::V6(form)).map_err(|denied| denied.class),
                    policy.check(IpAddr::V4(v4)).map_err(|denied| denied.class),
                    "{} as {} under {}", v4, form, policy
                );
            }
        }
    }
}

fn resolver(policy: EgressPolicy, addresses: &[&str]) -> GuardedResolver {
    let addresses: Vec<IpAddr> = addresses.iter().map(|text| ip(text)).collect();
    let table = HostsTable::new().with("evil.example", &addresses);
    GuardedResolver::new(policy, Arc::new(table))
}

// Goal: the resolver keeps only allowed addresses, and refuses a name whose every address is
// denied with the refusal naming the name. Method: a hosts table points `evil.example` at
// private, metadata and mixed addresses; nothing connects.
#[tokio::test]
async fn resolver_drops_denied_addresses_and_refuses_when_none_is_left() {
    let allowed = resolver(EgressPolicy::Standard, &["10.0.0.5"])
        .resolve_allowed("evil.example")
        .await
        .unwrap();
    assert_eq!(allowed, [ip("10.0.0.5")]);
    let refused = resolver(EgressPolicy::Strict, &["10.0.0.5"])
        .resolve_allowed("evil.example")
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "sink address 10.0.0.5 (from evil.example) is private, denied by the strict egress \
         policy; set webhooks.egress (--webhook-egress) to \"standard\" to allow it"
    );
    let refused = resolver(EgressPolicy::Standard, &["169.254.169.254"])
        .resolve_allowed("EVIL.example")
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ResolveError::Denied(denied) if denied.class == AddressClass::CloudMetadata),
        "{refused}"
    );
    let mixed = resolver(EgressPolicy::Strict, &["127.0.0.1", "93.184.215.14", "::1"])
        .resolve_allowed("evil.example")
        .await
        .unwrap();
    assert_eq!(mixed, [ip("93.184.215.14")]);
    let unknown = resolver(EgressPolicy::Open, &[])
        .resolve_allowed("other.example")
        .await
        .unwrap_err();
    assert!(matches!(unknown, ResolveError::Lookup(_)), "{unknown}");
}
