//! Reputation: what receivers' replies mean, and what Baton does about them. Pure: no
//! sockets, no actors, no clock (every function takes the time it needs).
//!
//! - [`category`]: the categories and scopes (the names the README, events and `batonctl` use).
//! - [`classify`]: a remote reply, normalised, into a [`classify::Category`] with its
//!   scope, by operator rules, then built-in text rules, then the enhanced-code table.
//! - [`site`]: the throttle state machine of one destination site (AIMD on rate
//!   limits, connection halving, suspension with a doubling cool-down and one probe).
//! - [`pace`]: a token bucket that spaces messages at a site's rate.
//! - [`tenant`]: a tenant's verdict from its hard-bounce and complaint counts.

pub mod category;
pub mod classify;
pub mod pace;
pub mod site;
pub mod tenant;
