//! Where webhooks may go: the operator's allow list, the address rule, a DNS
//! resolver that refuses before connecting, and URL-free error text.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

/// `KAIROS_WEBHOOK_ALLOW` when unset: loopback only, so a receiver on the same
/// machine works out of the box.
pub const DEFAULT_WEBHOOK_ALLOW: &str = "127.0.0.0/8,::1/128";

/// How much of a receiver's error body is read and kept.
pub const ERROR_BODY_CAP: usize = 512;

/// Networks the operator lets webhooks reach even though they are in a
/// special-purpose range (`KAIROS_WEBHOOK_ALLOW`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<IpNet>,
}

/// A `KAIROS_WEBHOOK_ALLOW` entry that is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{entry:?} is not an allow-list entry: expected comma-separated CIDRs such as \
     10.0.0.0/8 or fd00::/8, bare IP addresses, or `none` alone"
)]
pub struct BadAllowEntry {
    pub entry: String,
}

impl AllowList {
    /// An allow list with nothing in it (`none`): every special-purpose
    /// address is refused, loopback too.
    pub fn none() -> Self {
        Self {
            networks: Vec::new(),
        }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&address))
    }

    /// The address rule: an address inside the allow list is allowed;
    /// otherwise one in a special-purpose range is refused, naming the range,
    /// and a public one is allowed. An IPv6 address that embeds an IPv4 one
    /// (mapped, NAT64, 6to4) is judged by the IPv4 address.
    pub fn check(&self, address: IpAddr) -> Result<(), SpecialRange> {
        if self.contains(address) {
            return Ok(());
        }
        if let IpAddr::V6(v6) = address
            && let Some(v4) = embedded_ipv4(v6)
        {
            return self.check(IpAddr::V4(v4));
        }
        let table = match address {
            IpAddr::V4(_) => SPECIAL_V4,
            IpAddr::V6(_) => SPECIAL_V6,
        };
        match table.iter().find(|range| range.net.contains(&address)) {
            Some(range) => Err(*range),
            None => Ok(()),
        }
    }
}

impl Default for AllowList {
    fn default() -> Self {
        DEFAULT_WEBHOOK_ALLOW
            .parse()
            .expect("the default allow list parses")
    }
}

impl FromStr for AllowList {
    type Err = BadAllowEntry;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().eq_ignore_ascii_case("none") {
            return Ok(Self::none());
        }
        let networks = text
            .split(',')
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadAllowEntry {
                        entry: entry.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { networks })
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.networks.is_empty() {
            return f.write_str("none");
        }
        for (i, net) in self.networks.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// A special-purpose address range webhooks may not reach unless allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialRange {
    pub what: &'static str,
    pub net: IpNet,
}

impl fmt::Display for SpecialRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.what, self.net)
    }
}

const fn v4(what: &'static str, a: [u8; 4], prefix: u8) -> SpecialRange {
    let addr = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
    SpecialRange {
        what,
        net: IpNet::V4(Ipv4Net::new_assert(addr, prefix)),
    }
}

const fn v6(what: &'static str, s: [u16; 8], prefix: u8) -> SpecialRange {
    let addr = Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
    SpecialRange {
        what,
        net: IpNet::V6(Ipv6Net::new_assert(addr, prefix)),
    }
}

/// IANA special-purpose IPv4 ranges that are not public destinations.
const SPECIAL_V4: &[SpecialRange] = &[
    v4("\"this network\"", [0, 0, 0, 0], 8),
    v4("private", [10, 0, 0, 0], 8),
    v4("shared / carrier-grade NAT", [100, 64, 0, 0], 10),
    v4("loopback", [127, 0, 0, 0], 8),
    v4("link-local / cloud metadata", [169, 254, 0, 0], 16),
    v4("private", [172, 16, 0, 0], 12),
    v4("IETF protocol assignments", [192, 0, 0, 0], 24),
    v4("documentation", [192, 0, 2, 0], 24),
    v4("6to4 relay anycast", [192, 88, 99, 0], 24),
    v4("private", [192, 168, 0, 0], 16),
    v4("benchmarking", [198, 18, 0, 0], 15),
    v4("documentation", [198, 51, 100, 0], 24),
    v4("documentation", [203, 0, 113, 0], 24),
    v4("multicast", [224, 0, 0, 0], 4),
    v4("reserved / broadcast", [240, 0, 0, 0], 4),
];

/// IANA special-purpose IPv6 ranges, then everything outside global unicast
/// (`2000::/3`); the first match names the range.
const SPECIAL_V6: &[SpecialRange] = &[
    v6("unspecified", [0, 0, 0, 0, 0, 0, 0, 0], 128),
    v6("loopback", [0, 0, 0, 0, 0, 0, 0, 1], 128),
    v6("discard-only", [0x100, 0, 0, 0, 0, 0, 0, 0], 64),
    v6("documentation", [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    v6(
        "IETF protocol assignments",
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
    ),
    v6("documentation", [0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
    v6(
        "unique local / cloud metadata",
        [0xfc00, 0, 0, 0, 0, 0, 0, 0],
        7,
    ),
    v6("link-local", [0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    v6("multicast", [0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
    v6("reserved, not global unicast", [0, 0, 0, 0, 0, 0, 0, 0], 8),
    v6(
        "reserved, not global unicast",
        [0x100, 0, 0, 0, 0, 0, 0, 0],
        8,
    ),
    v6(
        "reserved, not global unicast",
        [0x200, 0, 0, 0, 0, 0, 0, 0],
        7,
    ),
    v6(
        "reserved, not global unicast",
        [0x400, 0, 0, 0, 0, 0, 0, 0],
        6,
    ),
    v6(
        "reserved, not global unicast",
        [0x800, 0, 0, 0, 0, 0, 0, 0],
        5,
    ),
    v6(
        "reserved, not global unicast",
        [0x1000, 0, 0, 0, 0, 0, 0, 0],
        4,
    ),
    v6(
        "reserved, not global unicast",
        [0x4000, 0, 0, 0, 0, 0, 0, 0],
        2,
    ),
    v6(
        "reserved, not global unicast",
        [0x8000, 0, 0, 0, 0, 0, 0, 0],
        1,
    ),
];

/// The IPv4 address inside an IPv4-mapped (`::ffff:0:0/96`), NAT64
/// (`64:ff9b::/96`) or 6to4 (`2002::/16`) address.
fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = address.segments();
    let from = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    match s {
        [0, 0, 0, 0, 0, 0xffff, high, low] => Some(from(high, low)),
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => Some(from(high, low)),
        [0x2002, high, low, ..] => Some(from(high, low)),
        _ => None,
    }
}

/// A webhook target whose address the allow list and the address rule refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RefusedAddress {
    /// The name that resolved to `address`; `None` when the URL gave the
    /// address itself.
    pub host: Option<String>,
    pub address: IpAddr,
    pub range: SpecialRange,
}

impl fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            host,
            address,
            range,
        } = self;
        match host {
            Some(host) => write!(
                f,
                "address not allowed: {host} resolves to {address}, which is in {range}"
            )?,
            None => write!(f, "address not allowed: {address} is in {range}")?,
        }
        f.write_str("; list it in KAIROS_WEBHOOK_ALLOW to allow it")
    }
}

/// Why a webhook URL is not accepted (admin API, at write time).
#[derive(Debug, thiserror::Error)]
pub enum UrlRefused {
    #[error("the scheme must be http or https, not {0:?}")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("does not resolve: {host}: {reason}")]
    DoesNotResolve { host: String, reason: String },
    #[error(transparent)]
    Address(#[from] RefusedAddress),
}

/// A reqwest DNS resolver that refuses a name if any of its addresses is
/// refused, so no connection is made to it. reqwest does not resolve IP
/// literals: check those with [`check_literal`].
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl GuardedResolver {
    pub fn new(allow: Arc<AllowList>) -> Self {
        Self { allow }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            check_all(&allow, &host, addresses.iter().map(SocketAddr::ip))?;
            let addrs: Addrs = Box::new(addresses.into_iter());
            Ok(addrs)
        })
    }
}

fn check_all(
    allow: &AllowList,
    host: &str,
    addresses: impl IntoIterator<Item = IpAddr>,
) -> Result<(), RefusedAddress> {
    for address in addresses {
        allow.check(address).map_err(|range| RefusedAddress {
            host: Some(host.to_string()),
            address,
            range,
        })?;
    }
    Ok(())
}

/// A reqwest client builder that sends only where `allow` permits: the
/// guarded resolver, no proxy (a proxy would be resolved and checked instead
/// of the target), and no redirects (a redirect could lead anywhere).
pub fn client_builder(allow: Arc<AllowList>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver::new(allow)))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
}

fn literal_address(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// Checks a URL whose host is an IP literal, which reqwest connects to
/// without asking the resolver; a URL with a name passes, as the resolver
/// checks it at send time.
pub fn check_literal(url: &Url, allow: &AllowList) -> Result<(), RefusedAddress> {
    match literal_address(url) {
        Some(address) => allow.check(address).map_err(|range| RefusedAddress {
            host: None,
            address,
            range,
        }),
        None => Ok(()),
    }
}

/// Checks a webhook URL when it is written: http or https, a host, and every
/// address it resolves to allowed.
pub async fn check_url(url: &Url, allow: &AllowList) -> Result<(), UrlRefused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefused::Scheme(url.scheme().to_string()));
    }
    let host = url.host_str().ok_or(UrlRefused::NoHost)?;
    if literal_address(url).is_some() {
        return Ok(check_literal(url, allow)?);
    }
    let does_not_resolve = |reason: String| UrlRefused::DoesNotResolve {
        host: host.to_string(),
        reason,
    };
    let addresses: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| does_not_resolve(e.to_string()))?
        .map(|a| a.ip())
        .collect();
    if addresses.is_empty() {
        return Err(does_not_resolve("no addresses".into()));
    }
    Ok(check_all(allow, host, addresses)?)
}

/// The resolver's refusal inside a failed send, if that is why it failed: a
/// refused address is final, not worth a retry.
pub fn refusal_in(err: &reqwest::Error) -> Option<&RefusedAddress> {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<RefusedAddress>() {
            return Some(refused);
        }
        source = cause.source();
    }
    None
}

/// `scheme://host[:port]/path`: a URL without its user, password, query and
/// fragment, fit for logs.
pub fn redact_url(url: &Url) -> String {
    match url.host_str() {
        Some(host) => {
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}{}", url.scheme(), url.path())
        }
        None => format!("{}:", url.scheme()),
    }
}

/// A failed send as stored in `last_error`: its kind and cause chain, never
/// its URL (which may carry credentials or a token in the query).
pub fn describe_send_error(err: reqwest::Error) -> String {
    if err.is_timeout() {
        return "timeout: the webhook did not answer in time".into();
    }
    let kind = if err.is_connect() {
        "connection error"
    } else {
        "request error"
    };
    let err = err.without_url();
    let mut text = format!("{kind}: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Reads a response body up to `cap` bytes and drops the rest unread.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while body.len() < cap {
        let Some(chunk) = response.chunk().await? else {
            break;
        };
        let room = cap - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::routing::get;
    use std::time::Duration;
    use tokio::net::TcpListener;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    fn range_of(allow: &AllowList, address: &str) -> Option<String> {
        allow.check(ip(address)).err().map(|r| r.to_string())
    }

    async fn closed_loopback_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    async fn serve(app: Router) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        address
    }

    #[test]
    fn the_default_allow_list_is_loopback() {
        let allow = AllowList::default();
        assert_eq!(allow.to_string(), "127.0.0.0/8,::1/128");
        assert!(allow.contains(ip("127.0.0.1")));
        assert!(allow.contains(ip("127.255.0.9")));
        assert!(allow.contains(ip("::1")));
        assert!(!allow.contains(ip("10.0.0.1")));
    }

    #[test]
    fn none_is_an_empty_allow_list() {
        for text in ["none", " none ", "NONE"] {
            let allow: AllowList = text.parse().unwrap();
            assert_eq!(allow, AllowList::none());
            assert_eq!(allow.to_string(), "none");
        }
    }

    #[test]
    fn a_bare_ip_is_a_single_address_and_whitespace_is_tolerated() {
        let allow: AllowList = " 10.1.2.3 , fd00::/8,::2 ".parse().unwrap();
        assert_eq!(allow.to_string(), "10.1.2.3/32,fd00::/8,::2/128");
        assert!(allow.contains(ip("10.1.2.3")));
        assert!(!allow.contains(ip("10.1.2.4")));
        assert!(allow.contains(ip("fd00:ec2::254")));
    }

    #[test]
    fn a_bad_entry_is_named_with_the_expected_form() {
        for (text, entry) in [
            ("10.0.0.0/8,10.0.0.0/33", "10.0.0.0/33"),
            ("example.com", "example.com"),
            ("127.0.0.1,,::1", ""),
            ("none,10.0.0.0/8", "none"),
            ("", ""),
        ] {
            let err = text.parse::<AllowList>().unwrap_err();
            assert_eq!(err.entry, entry, "{text}");
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("{entry:?} is not")),
                "{message}"
            );
            assert!(message.contains("10.0.0.0/8"), "{message}");
            assert!(message.contains("`none`"), "{message}");
        }
    }

    #[test]
    fn each_special_range_is_refused_by_name() {
        let allow = AllowList::none();
        for (address, range) in [
            ("0.0.0.0", "\"this network\" (0.0.0.0/8)"),
            ("10.0.0.1", "private (10.0.0.0/8)"),
            ("100.64.0.1", "shared / carrier-grade NAT (100.64.0.0/10)"),
            ("127.0.0.1", "loopback (127.0.0.0/8)"),
            (
                "169.254.169.254",
                "link-local / cloud metadata (169.254.0.0/16)",
            ),
            ("172.31.255.255", "private (172.16.0.0/12)"),
            ("192.0.0.8", "IETF protocol assignments (192.0.0.0/24)"),
            ("192.0.2.1", "documentation (192.0.2.0/24)"),
            ("192.88.99.1", "6to4 relay anycast (192.88.99.0/24)"),
            ("192.168.1.1", "private (192.168.0.0/16)"),
            ("198.19.0.1", "benchmarking (198.18.0.0/15)"),
            ("198.51.100.1", "documentation (198.51.100.0/24)"),
            ("203.0.113.1", "documentation (203.0.113.0/24)"),
            ("224.0.0.251", "multicast (224.0.0.0/4)"),
            ("255.255.255.255", "reserved / broadcast (240.0.0.0/4)"),
            ("::", "unspecified (::/128)"),
            ("::1", "loopback (::1/128)"),
            ("fd00:ec2::254", "unique local / cloud metadata (fc00::/7)"),
            ("fe80::1", "link-local (fe80::/10)"),
            ("ff02::1", "multicast (ff00::/8)"),
            ("100::1", "discard-only (100::/64)"),
            ("2001:db8::1", "documentation (2001:db8::/32)"),
            ("2001::1", "IETF protocol assignments (2001::/23)"),
            ("3fff::1", "documentation (3fff::/20)"),
            ("::10.0.0.1", "reserved, not global unicast (::/8)"),
            ("fec0::1", "reserved, not global unicast (8000::/1)"),
        ] {
            assert_eq!(
                range_of(&allow, address).as_deref(),
                Some(range),
                "{address}"
            );
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for allow in [AllowList::none(), AllowList::default()] {
            for address in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450::1"] {
                assert_eq!(range_of(&allow, address), None, "{address}");
            }
        }
    }

    #[test]
    fn the_allow_list_overrides_a_special_range() {
        let private: AllowList = "10.0.0.0/8".parse().unwrap();
        assert_eq!(range_of(&private, "10.0.0.1"), None);
        assert!(range_of(&private, "127.0.0.1").is_some());
        assert_eq!(range_of(&AllowList::default(), "127.0.0.1"), None);
        assert_eq!(
            range_of(&AllowList::none(), "127.0.0.1").as_deref(),
            Some("loopback (127.0.0.0/8)")
        );
    }

    #[test]
    fn an_embedded_ipv4_address_is_judged_as_itself() {
        let default = AllowList::default();
        assert_eq!(range_of(&default, "::ffff:127.0.0.1"), None);
        assert_eq!(range_of(&default, "::ffff:8.8.8.8"), None);
        assert_eq!(
            range_of(&default, "::ffff:10.0.0.1").as_deref(),
            Some("private (10.0.0.0/8)")
        );
        assert_eq!(
            range_of(&default, "64:ff9b::a9fe:a9fe").as_deref(),
            Some("link-local / cloud metadata (169.254.0.0/16)")
        );
        assert_eq!(
            range_of(&default, "2002:c0a8:0101::1").as_deref(),
            Some("private (192.168.0.0/16)")
        );
        assert_eq!(range_of(&default, "2002:0808:0808::1"), None);
        assert_eq!(
            range_of(&AllowList::none(), "::ffff:127.0.0.1").as_deref(),
            Some("loopback (127.0.0.0/8)")
        );
    }

    #[test]
    fn a_refusal_says_what_was_refused_and_how_to_allow_it() {
        let range = AllowList::none().check(ip("10.0.0.1")).unwrap_err();
        let named = RefusedAddress {
            host: Some("hooks.internal".into()),
            address: ip("10.0.0.1"),
            range,
        };
        assert_eq!(
            named.to_string(),
            "address not allowed: hooks.internal resolves to 10.0.0.1, which is in \
             private (10.0.0.0/8); list it in KAIROS_WEBHOOK_ALLOW to allow it"
        );
        let literal = RefusedAddress {
            host: None,
            ..named
        };
        assert_eq!(
            literal.to_string(),
            "address not allowed: 10.0.0.1 is in private (10.0.0.0/8); \
             list it in KAIROS_WEBHOOK_ALLOW to allow it"
        );
    }

    #[test]
    fn check_literal_judges_ip_hosts_and_passes_names() {
        let allow = AllowList::default();
        let refused = check_literal(&url("http://169.254.169.254/latest"), &allow).unwrap_err();
        assert_eq!(refused.host, None);
        assert_eq!(refused.address, ip("169.254.169.254"));
        assert!(check_literal(&url("http://[fd00:ec2::254]/"), &allow).is_err());
        assert!(check_literal(&url("http://[::1]:9000/"), &allow).is_ok());
        assert!(check_literal(&url("http://127.0.0.1:9000/"), &allow).is_ok());
        assert!(check_literal(&url("http://localhost/"), &AllowList::none()).is_ok());
        let numeric = check_literal(&url("http://2130706433/"), &AllowList::none()).unwrap_err();
        assert_eq!(numeric.address, ip("127.0.0.1"));
    }

    #[tokio::test]
    async fn check_url_refuses_what_delivery_would_refuse() {
        let allow = AllowList::default();
        assert!(matches!(
            check_url(&url("ftp://127.0.0.1/"), &allow).await,
            Err(UrlRefused::Scheme(s)) if s == "ftp"
        ));
        assert!(matches!(
            check_url(&url("http://10.0.0.1/hook"), &allow).await,
            Err(UrlRefused::Address(RefusedAddress { host: None, .. }))
        ));
        assert!(
            check_url(&url("http://127.0.0.1:8080/hook"), &allow)
                .await
                .is_ok()
        );
        assert!(
            check_url(&url("http://localhost:8080/hook"), &allow)
                .await
                .is_ok()
        );
        match check_url(&url("http://localhost:8080/hook"), &AllowList::none()).await {
            Err(UrlRefused::Address(refused)) => {
                assert_eq!(refused.host.as_deref(), Some("localhost"));
                assert!(refused.address.is_loopback());
            }
            other => panic!("expected a refused address, got {other:?}"),
        }
        match check_url(&url("http://does-not-exist.invalid/"), &allow).await {
            Err(err @ UrlRefused::DoesNotResolve { .. }) => {
                assert!(
                    err.to_string()
                        .starts_with("does not resolve: does-not-exist.invalid")
                );
            }
            other => panic!("expected does not resolve, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_before_connecting_and_the_refusal_is_found() {
        let client = client_builder(Arc::new(AllowList::none())).build().unwrap();
        let port = closed_loopback_port().await;
        let err = client
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        let refused = refusal_in(&err).expect("the refusal is in the error chain");
        assert_eq!(refused.host.as_deref(), Some("localhost"));
        assert!(refused.address.is_loopback());
        assert!(describe_send_error(err).contains("address not allowed: localhost resolves to"));
    }

    #[tokio::test]
    async fn an_ordinary_connection_error_is_not_a_refusal() {
        let client = client_builder(Arc::new(AllowList::default()))
            .build()
            .unwrap();
        let port = closed_loopback_port().await;
        let err = client
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert!(refusal_in(&err).is_none());
    }

    #[test]
    fn redact_url_keeps_scheme_host_port_and_path_only() {
        assert_eq!(
            redact_url(&url(
                "https://user:secret@hooks.example.com:8443/a/b?token=abc#frag"
            )),
            "https://hooks.example.com:8443/a/b"
        );
        assert_eq!(
            redact_url(&url("http://[::1]/hook?x=1")),
            "http://[::1]/hook"
        );
        assert_eq!(
            redact_url(&url("https://hooks.example.com:443")),
            "https://hooks.example.com/"
        );
    }

    #[tokio::test]
    async fn a_send_error_carries_no_credentials_or_query() {
        let client = client_builder(Arc::new(AllowList::default()))
            .build()
            .unwrap();
        let port = closed_loopback_port().await;
        let err = client
            .post(format!(
                "http://user:secret@127.0.0.1:{port}/hook?token=abc"
            ))
            .send()
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("token=abc"),
            "reqwest's own text has the URL"
        );
        let text = describe_send_error(err);
        assert!(text.starts_with("connection error: "), "{text}");
        for leak in ["secret", "user", "token", "abc", "/hook"] {
            assert!(!text.contains(leak), "{leak:?} in {text}");
        }
    }

    #[tokio::test]
    async fn a_webhook_that_does_not_answer_in_time_is_a_timeout() {
        let app = Router::new().route(
            "/",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let address = serve(app).await;
        let client = client_builder(Arc::new(AllowList::default()))
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let err = client
            .get(format!("http://{address}/?token=abc"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            describe_send_error(err),
            "timeout: the webhook did not answer in time"
        );
    }

    #[tokio::test]
    async fn read_capped_stops_at_the_cap() {
        let app = Router::new()
            .route("/big", get(|| async { vec![b'x'; 5 * 1024 * 1024] }))
            .route(
                "/endless",
                get(|| async {
                    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
                    Body::from_stream(futures::stream::repeat(Ok::<_, std::convert::Infallible>(
                        chunk,
                    )))
                }),
            )
            .route("/small", get(|| async { "short" }));
        let address = serve(app).await;
        let client = client_builder(Arc::new(AllowList::default()))
            .build()
            .unwrap();
        let get_body = |path: &'static str| {
            let request = client.get(format!("http://{address}{path}"));
            async move { read_capped(request.send().await.unwrap(), ERROR_BODY_CAP).await }
        };

        let big = get_body("/big").await.unwrap();
        assert_eq!(big, vec![b'x'; ERROR_BODY_CAP]);
        let endless = tokio::time::timeout(Duration::from_secs(10), get_body("/endless"))
            .await
            .expect("an endless body is not read to its end")
            .unwrap();
        assert_eq!(endless.len(), ERROR_BODY_CAP);
        assert_eq!(get_body("/small").await.unwrap(), b"short");
    }
}
