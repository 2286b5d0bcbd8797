//! The names operators, events, metrics and `batonctl classify` use.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a remote reply means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Delivered,
    BadMailbox,
    InactiveMailbox,
    BadDomain,
    MailboxFull,
    RecipientThrottled,
    RateLimited,
    ConnectionLimited,
    Blocklisted,
    DomainReputation,
    AuthFailure,
    MessageRejected,
    TlsRequired,
    TooManyRecipients,
    Transport,
    Other,
}

impl Category {
    /// Every category, in the README's order.
    pub const ALL: [Category; 16] = [
        Category::Delivered,
        Category::BadMailbox,
        Category::InactiveMailbox,
        Category::BadDomain,
        Category::MailboxFull,
        Category::RecipientThrottled,
        Category::RateLimited,
        Category::ConnectionLimited,
        Category::Blocklisted,
        Category::DomainReputation,
        Category::AuthFailure,
        Category::MessageRejected,
        Category::TlsRequired,
        Category::TooManyRecipients,
        Category::Transport,
        Category::Other,
    ];

    /// The snake_case name (`bad_mailbox`).
    pub fn name(self) -> &'static str {
        match self {
            Category::Delivered => "delivered",
            Category::BadMailbox => "bad_mailbox",
            Category::InactiveMailbox => "inactive_mailbox",
            Category::BadDomain => "bad_domain",
            Category::MailboxFull => "mailbox_full",
            Category::RecipientThrottled => "recipient_throttled",
            Category::RateLimited => "rate_limited",
            Category::ConnectionLimited => "connection_limited",
            Category::Blocklisted => "blocklisted",
            Category::DomainReputation => "domain_reputation",
            Category::AuthFailure => "auth_failure",
            Category::MessageRejected => "message_rejected",
            Category::TlsRequired => "tls_required",
            Category::TooManyRecipients => "too_many_recipients",
            Category::Transport => "transport",
            Category::Other => "other",
        }
    }

    /// The category named `name`, if any.
    pub fn parse(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The scope a reply of this category speaks about.
    pub fn scope(self) -> Scope {
        match self {
            Category::BadMailbox
            | Category::InactiveMailbox
            | Category::BadDomain
            | Category::MailboxFull
            | Category::RecipientThrottled => Scope::Recipient,
            Category::RateLimited
            | Category::ConnectionLimited
            | Category::Blocklisted
            | Category::TlsRequired
            | Category::Transport => Scope::Site,
            Category::DomainReputation => Scope::TenantSite,
            Category::AuthFailure => Scope::Tenant,
            Category::Delivered
            | Category::MessageRejected
            | Category::TooManyRecipients
            | Category::Other => Scope::Message,
        }
    }

    /// A hard bounce: the address is suppressed for everyone when the reply is 5xx.
    pub fn is_hard_bounce(self) -> bool {
        matches!(
            self,
            Category::BadMailbox | Category::InactiveMailbox | Category::BadDomain
        )
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a reply is about (recipient, site, tenant_site, tenant, message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Recipient,
    Site,
    TenantSite,
    Tenant,
    Message,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Recipient => "recipient",
            Scope::Site => "site",
            Scope::TenantSite => "tenant_site",
            Scope::Tenant => "tenant",
            Scope::Message => "message",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Category::ALL {
            assert_eq!(Category::parse(c.name()), Some(c));
        }
        assert_eq!(Category::parse("spam"), None);
    }
}
