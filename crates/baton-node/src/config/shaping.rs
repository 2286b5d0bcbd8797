//! `[shaping]`, `[[shaping.site]]` and `[tenants]` (README, "Configuration reference"): how fast each
//! destination site is sent to and how that changes with its replies, and when a
//! tenant is warned or paused. Turned into `baton_reputation`'s pure types here.

use super::ConfigError;
use baton_reputation::classify::{Classifier, RulesFile};
use baton_reputation::site::Shaping;
use baton_reputation::tenant::Thresholds;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// A rate: `"100/min"`, `"20/s"`, `"600/h"`; in messages (or connections) per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub f64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let s = String::deserialize(d)?;
        parse_rate(&s).map(Rate).map_err(serde::de::Error::custom)
    }
}

/// `"N/s"`, `"N/min"`, `"N/h"` (N may have a fraction) into per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let bad = || format!("{s:?} is not a rate like \"100/min\", \"20/s\" or \"600/h\"");
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(bad()),
    };
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("{s:?}: the rate must be more than 0"));
    }
    Ok(n / per)
}

/// `message_rate`: a rate, or `""` for none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptionalRate(pub Option<f64>);

impl<'de> Deserialize<'de> for OptionalRate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<OptionalRate, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Ok(OptionalRate(None));
        }
        parse_rate(&s)
            .map(|r| OptionalRate(Some(r)))
            .map_err(serde::de::Error::custom)
    }
}

/// Every `[shaping]` key, each optional: `[[shaping.site]]` overrides some of them.
macro_rules! shaping_keys {
    ($(#[$meta:meta])* pub struct $name:ident { $($extra:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($extra)*
            /// Outbound connections per site, cluster-wide.
            pub connections: Option<u32>,
            pub messages_per_connection: Option<u32>,
            pub connection_rate: Option<Rate>,
            /// `""`: unlimited.
            pub message_rate: Option<OptionalRate>,
            pub decrease_factor: Option<f64>,
            #[serde(default, with = "humantime_serde::option")]
            pub min_decrease_interval: Option<Duration>,
            #[serde(default, with = "humantime_serde::option")]
            pub increase_interval: Option<Duration>,
            pub increase_step: Option<f64>,
            pub min_rate: Option<Rate>,
            #[serde(default, with = "humantime_serde::option")]
            pub suspend: Option<Duration>,
            #[serde(default, with = "humantime_serde::option")]
            pub max_suspend: Option<Duration>,
        }
    };
}

shaping_keys! {
    /// `[shaping]`.
    pub struct ShapingConfig {
        /// Extra classification rules (TOML), checked by check-config.
        pub rules_file: Option<PathBuf>,
        #[serde(default)]
        pub site: Vec<SiteConfig>,
    }
}

shaping_keys! {
    /// `[[shaping.site]]`: overrides for the sites whose MX hosts end in `mx_suffix`.
    pub struct SiteConfig {
        #[serde(default)]
        pub name: String,
        #[serde(default)]
        pub mx_suffix: Vec<String>,
    }
}

/// The values in effect: a site's own, else `[shaping]`'s, else the legacy
/// `[delivery]` keys, else the defaults.
macro_rules! pick {
    ($site:expr, $base:expr, $field:ident) => {
        $site.and_then(|s: &SiteConfig| s.$field).or($base.$field)
    };
}

impl ShapingConfig {
    /// The throttle settings of `site` (`None`: a site with no `[[shaping.site]]`).
    /// `legacy_connections` is `delivery.max_connections_per_domain`, the old name of
    /// `connections`.
    pub fn shaping(&self, site: Option<&SiteConfig>, legacy_connections: usize) -> Shaping {
        let d = Shaping::default();
        Shaping {
            connections: pick!(site, self, connections)
                .unwrap_or_else(|| u32::try_from(legacy_connections).unwrap_or(u32::MAX)),
            message_rate: pick!(site, self, message_rate).map_or(d.message_rate, |r| r.0),
            decrease_factor: pick!(site, self, decrease_factor).unwrap_or(d.decrease_factor),
            min_decrease_interval: pick!(site, self, min_decrease_interval)
                .unwrap_or(d.min_decrease_interval),
            increase_interval: pick!(site, self, increase_interval).unwrap_or(d.increase_interval),
            increase_step: pick!(site, self, increase_step).unwrap_or(d.increase_step),
            min_rate: pick!(site, self, min_rate).map_or(d.min_rate, |r| r.0),
            suspend: pick!(site, self, suspend).unwrap_or(d.suspend),
            max_suspend: pick!(site, self, max_suspend).unwrap_or(d.max_suspend),
        }
    }

    /// Messages per connection for `site`; `legacy` is
    /// `delivery.max_messages_per_connection`.
    pub fn messages_per_connection(&self, site: Option<&SiteConfig>, legacy: usize) -> u32 {
        pick!(site, self, messages_per_connection)
            .unwrap_or_else(|| u32::try_from(legacy).unwrap_or(u32::MAX))
    }

    /// New connections per second for `site` (default 100/min).
    pub fn connection_rate(&self, site: Option<&SiteConfig>) -> f64 {
        pick!(site, self, connection_rate).map_or(100.0 / 60.0, |r| r.0)
    }

    /// The classifier of replies: `rules_file`'s rules (checked at start), then the
    /// built-in ones. A file that no longer reads or parses leaves the built-in rules,
    /// with an error in the log.
    pub fn classifier(&self) -> Classifier {
        match self.load_rules() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "shaping.rules_file: using the built-in rules only");
                Classifier::default()
            }
        }
    }

    /// The classifier from `rules_file` as it is now (the built-in rules alone without
    /// one), or why the file does not read or parse, naming it and each bad line.
    pub fn load_rules(&self) -> Result<Classifier, String> {
        let Some(path) = &self.rules_file else {
            return Ok(Classifier::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rules = RulesFile::parse(&text, path).map_err(|problems| {
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(Classifier::new(rules))
    }

    /// Every problem, each naming its key.
    pub fn check(&self, legacy_connections: usize, errors: &mut Vec<ConfigError>) {
        let mut err = |key: String, reason: &str| {
            errors.push(ConfigError {
                key,
                reason: reason.to_string(),
            })
        };
        let mut sites: Vec<(String, Option<&SiteConfig>)> = vec![("shaping".into(), None)];
        for (i, s) in self.site.iter().enumerate() {
            sites.push((format!("shaping.site[{i}]"), Some(s)));
            if s.name.trim().is_empty() {
                err(format!("shaping.site[{i}].name"), "must not be empty");
            }
            if self.site[..i].iter().any(|o| o.name == s.name) {
                err(
                    format!("shaping.site[{i}].name"),
                    "is already used by another site",
                );
            }
            if s.mx_suffix.is_empty() {
                err(
                    format!("shaping.site[{i}].mx_suffix"),
                    "needs at least one suffix, e.g. [\".google.com\"]",
                );
            }
            for (j, suffix) in s.mx_suffix.iter().enumerate() {
                let name = suffix.trim_start_matches('.');
                let valid = !name.is_empty()
                    && name.split('.').all(|l| {
                        !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-')
                    });
                if !valid {
                    err(
                        format!("shaping.site[{i}].mx_suffix[{j}]"),
                        "is not a host name suffix like \".google.com\"",
                    );
                }
            }
        }
        for (prefix, site) in sites {
            let s = self.shaping(site, legacy_connections);
            let key = |k: &str| format!("{prefix}.{k}");
            if s.connections == 0 {
                err(key("connections"), "must be at least 1");
            }
            if self.messages_per_connection(site, 1) == 0 {
                err(key("messages_per_connection"), "must be at least 1");
            }
            if !(s.decrease_factor > 0.0 && s.decrease_factor < 1.0) {
                err(
                    key("decrease_factor"),
                    "must be between 0 and 1 (exclusive)",
                );
            }
            if !(s.increase_step > 0.0 && s.increase_step <= 1.0) {
                err(key("increase_step"), "must be more than 0 and at most 1");
            }
            if s.min_decrease_interval.is_zero() {
                err(key("min_decrease_interval"), "must be longer than 0");
            }
            if s.increase_interval.is_zero() {
                err(key("increase_interval"), "must be longer than 0");
            }
            if s.suspend.is_zero() {
                err(key("suspend"), "must be longer than 0");
            }
            if s.max_suspend < s.suspend {
                err(key("max_suspend"), "must be at least suspend");
            }
            if let Some(r) = s.message_rate
                && r < s.min_rate
            {
                err(key("min_rate"), "must not be above message_rate");
            }
        }
        if let Some(path) = &self.rules_file {
            match std::fs::read_to_string(path) {
                Err(e) => err(
                    "shaping.rules_file".into(),
                    &format!("cannot read {}: {e}", path.display()),
                ),
                Ok(text) => {
                    if let Err(problems) = RulesFile::parse(&text, path) {
                        for p in problems {
                            err("shaping.rules_file".into(), &p.to_string());
                        }
                    }
                }
            }
        }
    }
}

/// `[tenants]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantsConfig {
    pub bounce_warn_rate: f64,
    pub bounce_pause_rate: f64,
    pub bounce_min_volume: u64,
    pub complaint_warn_rate: f64,
    pub complaint_pause_rate: f64,
    pub complaint_min_volume: u64,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        let t = Thresholds::default();
        TenantsConfig {
            bounce_warn_rate: t.bounce_warn_rate,
            bounce_pause_rate: t.bounce_pause_rate,
            bounce_min_volume: t.bounce_min_volume,
            complaint_warn_rate: t.complaint_warn_rate,
            complaint_pause_rate: t.complaint_pause_rate,
            complaint_min_volume: t.complaint_min_volume,
            window: t.window,
        }
    }
}

impl TenantsConfig {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            bounce_warn_rate: self.bounce_warn_rate,
            bounce_pause_rate: self.bounce_pause_rate,
            bounce_min_volume: self.bounce_min_volume,
            complaint_warn_rate: self.complaint_warn_rate,
            complaint_pause_rate: self.complaint_pause_rate,
            complaint_min_volume: self.complaint_min_volume,
            window: self.window,
            ..Thresholds::default()
        }
    }

    /// Every problem, each naming its key.
    pub fn check(&self, errors: &mut Vec<ConfigError>) {
        let mut err = |key: &str, reason: &str| {
            errors.push(ConfigError {
                key: format!("tenants.{key}"),
                reason: reason.to_string(),
            })
        };
        for (key, rate) in [
            ("bounce_warn_rate", self.bounce_warn_rate),
            ("bounce_pause_rate", self.bounce_pause_rate),
            ("complaint_warn_rate", self.complaint_warn_rate),
            ("complaint_pause_rate", self.complaint_pause_rate),
        ] {
            if !(rate > 0.0 && rate <= 1.0) {
                err(
                    key,
                    "must be a share more than 0 and at most 1 (0.05 is 5%)",
                );
            }
        }
        if self.bounce_warn_rate > self.bounce_pause_rate {
            err("bounce_warn_rate", "must not be above bounce_pause_rate");
        }
        if self.complaint_warn_rate > self.complaint_pause_rate {
            err(
                "complaint_warn_rate",
                "must not be above complaint_pause_rate",
            );
        }
        if self.window < Duration::from_secs(3600) {
            err("window", "must be at least 1h");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("120/min"), Ok(2.0));
        assert_eq!(parse_rate("20/s"), Ok(20.0));
        assert_eq!(parse_rate("3600/h"), Ok(1.0));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/day").is_err());
    }

    #[test]
    fn a_site_overrides_shaping_which_overrides_the_defaults() {
        let c = Config::parse(
            "[delivery]\nmax_connections_per_domain = 7\n\
             [shaping]\nmessage_rate = \"600/min\"\nincrease_step = 0.1\n\
             [[shaping.site]]\nname = \"google\"\nmx_suffix = [\".google.com\"]\nconnections = 5\nmessage_rate = \"\"\n",
        )
        .unwrap();
        let base = c
            .shaping
            .shaping(None, c.delivery.max_connections_per_domain);
        assert_eq!(base.connections, 7, "the legacy key");
        assert_eq!(base.message_rate, Some(10.0));
        assert_eq!(base.increase_step, 0.1);
        assert_eq!(base.decrease_factor, 0.5);
        let google = c.shaping.shaping(Some(&c.shaping.site[0]), 7);
        assert_eq!(google.connections, 5);
        assert_eq!(google.message_rate, None);
        assert_eq!(google.increase_step, 0.1);
    }

    #[test]
    fn a_bad_rule_is_reported_with_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.toml");
        std::fs::write(
            &rules,
            "[[rule]]\nname = \"ok\"\nregex = 'RL0001'\ncategory = \"rate_limited\"\n\n\
             [[rule]]\nname = \"bad\"\nregex = '(unclosed'\ncategory = \"spam\"\n",
        )
        .unwrap();
        let mut c = Config::dev(None);
        c.shaping.rules_file = Some(rules.clone());
        let e = c.validate().unwrap_err().to_string();
        let file = rules.display().to_string();
        assert!(e.contains(&format!("{file}:9")), "{e}");
        assert!(e.contains(&format!("{file}:8")), "{e}");
        assert_eq!(e.matches("shaping.rules_file").count(), 2, "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let c = Config::parse(
            "[shaping]\ndecrease_factor = 1.5\nsuspend = \"2h\"\nmax_suspend = \"1h\"\n\
             [[shaping.site]]\nname = \"\"\nmx_suffix = [\"not a host\"]\n\
             [tenants]\nbounce_warn_rate = 0.2\nbounce_pause_rate = 0.1\nwindow = \"10m\"\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        for key in [
            "shaping.decrease_factor",
            "shaping.max_suspend",
            "shaping.site[0].name",
            "shaping.site[0].mx_suffix[0]",
            "shaping.site[0].decrease_factor",
            "tenants.bounce_warn_rate",
            "tenants.window",
        ] {
            assert!(e.contains(key), "{key} not in:\n{e}");
        }
    }
}
