//! API tokens: their scopes, and the bodies of `/v1/tokens`.
//!
//! A scope is `ACTION` or `ACTION:PATTERN`. The actions:
//!
//! | action    | allows                                                                  | on            |
//! |-----------|-------------------------------------------------------------------------|---------------|
//! | `admin`   | everything, tokens included                                             | —             |
//! | `manage`  | create, change and delete; everything `read` allows                     | topics, subscriptions |
//! | `publish` | publish events                                                          | topics        |
//! | `read`    | describe, read events, dead letters and state                           | topics, subscriptions |
//! | `consume` | pull, ack, nack and reject; describe, dead letters and state            | subscriptions |
//!
//! The pattern is a name, or a glob where `*` stands for any run of characters
//! (`orders.*`, `*-eu`); without one, the scope covers every name. Whatever is not about one
//! named topic or subscription (metrics, the cluster, alert rules) needs a scope without a
//! pattern (or with `*`).
//!
//! ```
//! use keel_api::tokens::{Action, Resource, Scope};
//!
//! let scope: Scope = "publish:orders.*".parse()?;
//! assert!(scope.grants(Action::Publish, Resource::Topic("orders.eu")));
//! assert!(!scope.grants(Action::Publish, Resource::Topic("billing")));
//! assert!(!scope.grants(Action::Read, Resource::Topic("orders.eu")));
//! # Ok::<(), String>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// Longest pattern a scope takes, in bytes.
pub const PATTERN_BYTES_MAX: usize = 256;

/// What a scope allows doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Everything, tokens included.
    Admin,
    /// Create, change and delete topics and subscriptions; everything `read` allows.
    Manage,
    /// Publish to topics.
    Publish,
    /// Describe topics and subscriptions, read events, dead letters and state.
    Read,
    /// Pull, ack, nack and reject a subscription's events; describe it, read its dead
    /// letters and state.
    Consume,
}

impl Action {
    /// Every action, in the order the documentation lists them.
    pub const ALL: [Action; 5] = [
        Action::Admin,
        Action::Manage,
        Action::Publish,
        Action::Read,
        Action::Consume,
    ];

    /// The action's name in a scope.
    pub fn name(self) -> &'static str {
        match self {
            Action::Admin => "admin",
            Action::Manage => "manage",
            Action::Publish => "publish",
            Action::Read => "read",
            Action::Consume => "consume",
        }
    }

    /// Whether a scope of this action allows `wanted` (on a name its pattern covers).
    fn allows(self, wanted: Action) -> bool {
        match self {
            Action::Admin => true,
            Action::Manage => matches!(wanted, Action::Manage | Action::Read),
            Action::Consume => matches!(wanted, Action::Consume | Action::Read),
            own => own == wanted,
        }
    }

    /// Whether a scope of this action can name `resource`'s kind (`publish` names topics,
    /// `consume` subscriptions).
    fn applies_to(self, resource: Resource<'_>) -> bool {
        !matches!(
            (self, resource),
            (Action::Publish, Resource::Subscription(_)) | (Action::Consume, Resource::Topic(_))
        )
    }
}

/// What an action is done on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// Something not about one named topic or subscription: metrics, the cluster, the alert
    /// rules, the token list. Only a scope without a pattern (or `*`) covers it.
    Everything,
    /// A topic, by name.
    Topic(&'a str),
    /// A subscription, by name.
    Subscription(&'a str),
}

/// One scope of a token: an action, on every name or on the names a pattern covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// What it allows.
    pub action: Action,
    /// The names it covers; none: every name.
    pub pattern: Option<String>,
}

impl Scope {
    /// Whether this scope allows `action` on `resource`.
    pub fn grants(&self, action: Action, resource: Resource<'_>) -> bool {
        if !self.action.allows(action) || !self.action.applies_to(resource) {
            return false;
        }
        match (&self.pattern, resource) {
            (None, _) => true,
            (Some(pattern), Resource::Everything) => pattern == "*",
            (Some(pattern), Resource::Topic(name) | Resource::Subscription(name)) => {
                pattern_matches(pattern, name)
            }
        }
    }

    /// Whether this scope covers `resource` for any action at all (what a token may see of
    /// it: lists show only those).
    pub fn sees(&self, resource: Resource<'_>) -> bool {
        Action::ALL
            .iter()
            .any(|&action| self.grants(action, resource))
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (action_name, pattern) = match text.split_once(':') {
            Some((action, pattern)) => (action, Some(pattern)),
            None => (text, None),
        };
        let action = Action::ALL
            .into_iter()
            .find(|action| action.name() == action_name)
            .ok_or_else(|| {
                format!(
                    "invalid scope {text:?}: the action must be one of admin, manage, publish, read, consume (as in \"publish:orders.*\")"
                )
            })?;
        let Some(pattern) = pattern else {
            return Ok(Scope {
                action,
                pattern: None,
            });
        };
        if action == Action::Admin {
            return Err(format!(
                "invalid scope {text:?}: admin covers everything and takes no pattern"
            ));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*');
        if pattern.is_empty() || pattern.len() > PATTERN_BYTES_MAX || !pattern.chars().all(allowed)
        {
            return Err(format!(
                "invalid scope {text:?}: a pattern is 1 to {PATTERN_BYTES_MAX} characters of A-Z, a-z, 0-9, '.', '_', '-' and '*' (any run of characters)"
            ));
        }
        Ok(Scope {
            action,
            pattern: Some(pattern.to_owned()),
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pattern {
            Some(pattern) => write!(f, "{}:{pattern}", self.action.name()),
            None => f.write_str(self.action.name()),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A scope is a string: `ACTION` or `ACTION:PATTERN` (`admin` takes no pattern).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Scope {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let with_pattern: Vec<&str> = Action::ALL
            .iter()
            .filter(|action| **action != Action::Admin)
            .map(|action| action.name())
            .collect();
        let pattern = format!(
            "^({}|({})(:[A-Za-z0-9._*-]{{1,{PATTERN_BYTES_MAX}}})?)$",
            Action::Admin.name(),
            with_pattern.join("|"),
        );
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(pattern))
            .description(Some(
                "A scope: `ACTION` or `ACTION:PATTERN`. The action is admin, manage, publish, read \
                 or consume; the pattern (not with admin) is a name or a glob where `*` stands for \
                 any run of characters.",
            ))
            .examples(["publish:orders.*"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Scope {}

/// Whether glob `pattern` (`*`: any run of characters, none included) covers all of `name`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    // Greedy matching with one backtrack point (the last `*`): linear in practice, and
    // O(pattern × name) at worst, on names of at most a few hundred bytes.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

/// Limits on what one token may do per second (on each node). Left out: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Events published per second; a publish over it answers 429 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_per_second: Option<u32>,
    /// Pull requests per second; one over it answers 429 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_per_second: Option<u32>,
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// What the token is for, shown in lists (`billing-service`).
    pub name: String,
    /// What it allows.
    pub scopes: Vec<Scope>,
    /// How long it lasts (`"30d"`); none: until revoked.
    #[serde(
        default,
        with = "duration::serde_text_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = duration::DurationText))]
    pub expires_in: Option<Duration>,
    /// Rate limits; none by default.
    #[serde(default, skip_serializing_if = "crate::is_default")]
    pub limits: RateLimits,
}

/// A token as listed: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    /// Its id: the public part of the token, which revocation names.
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it allows.
    pub scopes: Vec<Scope>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it stops working (RFC 3339); none: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub expires_at: Option<String>,
    /// Whether it has expired.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required))]
    pub expired: bool,
    /// Its rate limits.
    #[serde(default, skip_serializing_if = "crate::is_default")]
    pub limits: RateLimits,
}

/// The answer to `POST /v1/tokens`: the token itself, shown this once, and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    /// The bearer token: send it as `Authorization: Bearer <token>`. Keel keeps only its
    /// hash; it cannot be shown again.
    pub token: String,
    /// What it is.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// The answer to `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenList {
    /// Every token, oldest first.
    pub tokens: Vec<TokenInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a glob covers exactly the names it should: `*` is any run (none included), and
    // everything else is literal.
    #[test]
    fn patterns_cover_the_names_they_should() {
        for (pattern, name, covered) in [
            ("orders", "orders", true),
            ("orders", "orders.eu", false),
            ("orders.*", "orders.eu", true),
            ("orders.*", "orders.", true),
            ("orders.*", "orders", false),
            ("orders.*", "ordersX", false),
            ("*", "anything", true),
            ("*-eu", "billing-eu", true),
            ("*-eu", "billing-us", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*b", "abab", true),
            ("**", "", true),
            ("a.b", "aXb", false),
        ] {
            assert_eq!(pattern_matches(pattern, name), covered, "{pattern} {name}");
        }
    }

    // Goal: each action allows what the table in the module documentation says, on the kinds
    // of resource it names, and a pattern limits it to the names it covers.
    #[test]
    fn scopes_grant_what_the_table_says() {
        let scope = |text: &str| text.parse::<Scope>().unwrap();
        let topic = Resource::Topic("orders");
        let subscription = Resource::Subscription("billing");
        assert!(scope("admin").grants(Action::Manage, Resource::Everything));
        assert!(scope("manage").grants(Action::Read, topic));
        assert!(!scope("manage").grants(Action::Publish, topic));
        assert!(!scope("manage").grants(Action::Consume, subscription));
        assert!(scope("publish").grants(Action::Publish, topic));
        assert!(!scope("publish").grants(Action::Publish, subscription));
        assert!(!scope("publish").grants(Action::Read, topic));
        assert!(scope("consume:billing").grants(Action::Consume, subscription));
        assert!(scope("consume:billing").grants(Action::Read, subscription));
        assert!(!scope("consume:billing").grants(Action::Read, Resource::Topic("billing")));
        assert!(!scope("consume:bill").grants(Action::Consume, subscription));
        assert!(scope("read:*").grants(Action::Read, Resource::Everything));
        assert!(!scope("read:orders*").grants(Action::Read, Resource::Everything));
        assert!(scope("read:orders*").sees(topic));
        assert!(!scope("read:orders*").sees(subscription));
    }

    // Goal: scopes read back as written, and a bad one is refused with what is accepted.
    #[test]
    fn scopes_parse_and_refuse_with_reasons() {
        for text in [
            "admin",
            "manage",
            "publish:orders.*",
            "consume:billing",
            "read:*",
        ] {
            assert_eq!(text.parse::<Scope>().unwrap().to_string(), text);
        }
        for (text, reason) in [
            ("write:orders", "the action must be one of"),
            ("admin:orders", "takes no pattern"),
            ("publish:", "a pattern is 1 to"),
            ("publish:orders/eu", "a pattern is 1 to"),
            ("", "the action must be one of"),
        ] {
            let error = text.parse::<Scope>().unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }
}
