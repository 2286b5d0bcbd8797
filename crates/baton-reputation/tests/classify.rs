//! Classification: every fixture reply, the code table,
//! normalisation, operator rules and their file's errors, and properties.

use baton_reputation::category::{Category, Scope};
use baton_reputation::classify::{Classifier, CodePattern, MAX_LEN, RulesFile, Trigger, normalize};
use proptest::prelude::*;
use std::time::Duration;

use Category::*;

mod fixtures;
use fixtures::{GMAIL_551, fixtures};

#[test]
fn every_fixture() {
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 17);
    let c = Classifier::default();
    for (reply, category, rule, factor, suspend) in fixtures {
        let v = c.classify(reply);
        assert_eq!(
            (v.category, v.rule.as_str(), v.factor, v.suspend, v.trigger),
            (category, rule, factor, suspend, None),
            "{reply}"
        );
        // The same through CR-only-free LF endings and a normalised copy.
        assert_eq!(c.classify(&reply.replace("\r\n", "\n")).category, category);
        assert_eq!(c.classify(&v.reply).category, category);
    }
}

#[test]
fn scopes() {
    let c = Classifier::default();
    assert_eq!(c.classify(GMAIL_551).scope(), Scope::Recipient);
    assert_eq!(
        c.classify("421-4.7.28 unusual rate of mail from your IP")
            .scope(),
        Scope::Site
    );
    assert_eq!(
        c.classify("421-4.7.28 unusual rate from your DKIM domain x")
            .scope(),
        Scope::TenantSite
    );
}

#[test]
fn code_table() {
    let c = Classifier::default();
    let cases = [
        ("250 2.0.0 Ok: queued as X", Delivered, "code:2.0.0"),
        ("250 Ok", Delivered, "code:250"),
        (
            "550 5.1.1 <a@b>: Recipient address rejected",
            BadMailbox,
            "code:5.1.1",
        ),
        ("550 5.1.3 bad syntax", BadMailbox, "code:5.1.3"),
        ("551 5.1.6 moved", BadMailbox, "code:5.1.6"),
        ("550 5.2.1 disabled", InactiveMailbox, "code:5.2.1"),
        ("550 5.7.17 gone", InactiveMailbox, "code:5.7.17"),
        ("550 5.1.2 no host", BadDomain, "code:5.1.2"),
        ("550 5.1.10 null mx", BadDomain, "code:5.1.10"),
        ("550 5.7.18 relay denied", BadDomain, "code:5.7.18"),
        ("552 5.2.2 full", MailboxFull, "code:5.2.2"),
        ("452 4.2.2 full", MailboxFull, "code:4.2.2"),
        ("451 4.4.1 no answer", Transport, "code:4.4.1"),
        ("451 4.4.2 bad connection", Transport, "code:4.4.2"),
        ("421 4.7.28 slow down", RateLimited, "code:4.7.28"),
        ("550 5.7.28 go away", Blocklisted, "code:5.7.28"),
        ("421 4.7.27 spf", AuthFailure, "code:4.7.27"),
        ("421 4.7.30 dkim", AuthFailure, "code:4.7.30"),
        ("421 4.7.32 alignment", AuthFailure, "code:4.7.32"),
        ("421 4.7.40 dmarc", AuthFailure, "code:4.7.40"),
        ("550 5.7.26 unauthenticated", AuthFailure, "code:5.7.26"),
        ("550 5.7.27 spf", AuthFailure, "code:5.7.27"),
        ("550 5.7.30 dkim", AuthFailure, "code:5.7.30"),
        ("550 5.7.515 Access denied", AuthFailure, "code:5.7.515"),
        ("421 4.7.29 no tls", TlsRequired, "code:4.7.29"),
        ("530 5.7.10 encryption needed", TlsRequired, "code:5.7.10"),
        ("452 4.5.3 too many", TooManyRecipients, "code:4.5.3"),
        ("552 5.3.4 too big", MessageRejected, "code:5.3.4"),
        ("554 5.6.0 bad content", MessageRejected, "code:5.6.0"),
        ("550 5.7.1 rejected", MessageRejected, "code:5.7.1"),
        ("451 4.7.1 greylisted", MessageRejected, "code:4.7.1"),
        // Fallbacks: not in the table, or no enhanced code: other, by class.
        ("451 4.3.0 try later", Other, "code:4.3.0"),
        ("554 5.0.0 no", Other, "code:5.0.0"),
        ("421 closing", Other, "code:421"),
        ("550 no", Other, "code:550"),
        ("354 go ahead", Other, "code:354"),
        // No reply code at all: transport.
        ("connection refused", Transport, "transport"),
        ("timed out", Transport, "transport"),
        ("", Transport, "transport"),
        ("999 not smtp", Transport, "transport"),
    ];
    for (reply, category, rule) in cases {
        let v = c.classify(reply);
        assert_eq!((v.category, v.rule.as_str()), (category, rule), "{reply}");
    }
}

#[test]
fn text_beats_code_and_class_limits() {
    let c = Classifier::default();
    // 5.7.1 is message_rejected by the table; the text says block list.
    assert_eq!(
        c.classify("550 5.7.1 you are on our block list").category,
        Blocklisted
    );
    // A 450's "mailbox unavailable" is RFC 5321's "busy": not a bad mailbox.
    let v = c.classify("450 4.2.0 Requested mail action not taken: mailbox unavailable");
    assert_eq!((v.category, v.rule.as_str()), (Other, "code:4.2.0"));
    // 2xx is delivered whatever the text says.
    assert_eq!(
        c.classify("250 2.0.0 on our block list").category,
        Delivered
    );
    // Built-in text rules do not apply to transport errors.
    assert_eq!(
        c.classify("TLS required, connection closed").category,
        Transport
    );
}

#[test]
fn normalisation() {
    assert_eq!(
        normalize(GMAIL_551),
        "550 5.1.1 The email account that you tried to reach does not exist. Please try \
         double-checking the recipient's email address for typos or unnecessary spaces. For \
         more information, go to https://support.google.com/mail/?p=NoSuchUser \
         41be03b00d2f7-b8a1c1 - gsmtp"
    );
    assert_eq!(normalize("550-5.1.1 a\n550-b\n550 c"), "550 5.1.1 a b c");
    assert_eq!(normalize("421 4.7.0  a \t b  "), "421 4.7.0 a b");
    assert_eq!(
        normalize("  connection\r\n  refused  "),
        "connection refused"
    );
    assert_eq!(normalize("250"), "250");
    assert_eq!(normalize("\r\n\r\n"), "");
    // A different enhanced code on a continuation line stays.
    assert_eq!(
        normalize("550-5.1.1 a\r\n550 5.7.1 b"),
        "550 5.1.1 a 5.7.1 b"
    );
    // Capped at 4 KiB on a character boundary.
    let long = format!("550 5.7.1 {}", "é".repeat(5000));
    let n = normalize(&long);
    assert!(n.len() <= MAX_LEN && n.len() > MAX_LEN - 4);
    assert_eq!(normalize(&n), n);
    let many = "550-5.7.1 x\r\n".repeat(10_000);
    assert!(normalize(&many).len() <= MAX_LEN);
}

#[test]
fn code_patterns() {
    for ok in ["5.7.1", "4.*", "5.7.*", "*.1.1", "*", "2.*.*"] {
        assert!(CodePattern::parse(ok).is_some(), "{ok}");
    }
    for bad in [
        "5", "5.7", "x.1.1", "3.*", "5.7.1.1", "", "5..1", "5.7.1000",
    ] {
        assert!(CodePattern::parse(bad).is_none(), "{bad}");
    }
}

const RULES: &str = r#"
[[rule]]
name = "comcast-rl000010"
regex = 'RL000010'
code = "4.*"
category = "domain_reputation"
suspend = "5m"
trigger = { count = 3, within = "1h" }

[[rule]]
name = "gentle-gmail"
regex = '(?i)unusual rate of email .*your IP'
category = "rate_limited"
factor = 0.8

[[rule]]
name = "local-5.7.1"
code = "5.7.1"
category = "bad_mailbox"
"#;

#[test]
fn operator_rules_come_first() {
    let rules = RulesFile::parse(RULES, "/etc/baton/rules.toml").expect("valid rules");
    assert_eq!(rules.len(), 3);
    let c = Classifier::new(rules);
    // Overrides the built-in gmail-unusual-rate.
    let v = c.classify(fixtures()[0].0);
    assert_eq!(
        (v.category, v.rule.as_str(), v.factor),
        (RateLimited, "gentle-gmail", Some(0.8))
    );
    let v = c.classify("421 4.7.0 RL000010 too much from you");
    assert_eq!(
        (v.category, v.rule.as_str(), v.suspend, v.trigger),
        (
            DomainReputation,
            "comcast-rl000010",
            Some(Duration::from_secs(300)),
            Some(Trigger {
                count: 3,
                within: Duration::from_secs(3600)
            })
        )
    );
    // Its code pattern is 4.*: a 5xx with the same text is not its.
    assert_eq!(c.classify("554 5.7.0 RL000010").rule, "code:5.7.0");
    // A code-only rule beats the built-in text rules too.
    let v = c.classify("550 5.7.1 on our block list (S3150)");
    assert_eq!((v.category, v.rule.as_str()), (BadMailbox, "local-5.7.1"));
    // Replies the rules do not match: as without them.
    let plain = Classifier::default();
    for (reply, ..) in fixtures().into_iter().skip(1).take(10) {
        if !reply.contains("5.7.1 ") {
            assert_eq!(c.classify(reply), plain.classify(reply), "{reply}");
        }
    }
}

#[test]
fn inline_rules() {
    let text = "rule = [\n  { name = \"a\", regex = 'RL1', category = \"blocklisted\" },\n  { name = \"b\", regex = '(', category = \"other\" },\n]\n";
    let errors = RulesFile::parse(text, "r.toml").expect_err("bad regex");
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(got, vec![(3, "rule[1].regex")]);
    let rules = RulesFile::parse(&text.replace("'('", "'x'"), "r.toml").expect("valid");
    assert_eq!(rules.len(), 2);
    let v = Classifier::new(rules).classify("421 4.7.0 RL1");
    assert_eq!((v.category, v.rule.as_str()), (Blocklisted, "a"));
}

#[test]
fn empty_rules_file() {
    assert!(RulesFile::parse("", "r.toml").expect("empty").is_empty());
    assert!(
        RulesFile::parse("# nothing\n", "r.toml")
            .expect("empty")
            .is_empty()
    );
}

#[test]
fn every_problem_with_its_line() {
    let text = r#"[[rule]]
name = "bad-regex"
regex = '(unclosed'
category = "blocklisted"

[[rule]]
name = "bad-category"
regex = 'x'
category = "spam"

[[rule]]
name = "bad-factor"
regex = 'y'
category = "rate_limited"
factor = 1.5

[[rule]]
name = "bad-suspend"
regex = 'z'
category = "blocklisted"
suspend = "soon"
colour = "red"

[[rule]]
regex = 'w'
category = "other"
code = "5.7"
trigger = { count = 0, within = "1h", every = 2 }

[[rule]]
name = "bad-regex"
category = "rate_limited"
suspend = "1h"
"#;
    let errors = RulesFile::parse(text, "/etc/baton/rules.toml").expect_err("invalid");
    let got: Vec<(usize, &str, Option<&str>)> = errors
        .iter()
        .map(|e| (e.line, e.key.as_str(), e.rule.as_deref()))
        .collect();
    let want = vec![
        (3, "rule[0].regex", Some("bad-regex")),
        (9, "rule[1].category", Some("bad-category")),
        (15, "rule[2].factor", Some("bad-factor")),
        (21, "rule[3].suspend", Some("bad-suspend")),
        (22, "rule[3].colour", Some("bad-suspend")),
        (24, "rule[4].name", None),
        (27, "rule[4].code", None),
        (28, "rule[4].trigger", None),
        (28, "rule[4].trigger", None),
        (30, "rule[5].regex", Some("bad-regex")),
        (31, "rule[5].name", Some("bad-regex")),
        (33, "rule[5].suspend", Some("bad-regex")),
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted, "{errors:#?}");
    for e in &errors {
        assert_eq!(e.path.to_str(), Some("/etc/baton/rules.toml"));
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("/etc/baton/rules.toml:{}: rule[", e.line)),
            "{shown}"
        );
    }
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.starts_with("bad regex")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("unknown category \"spam\""))
    );
    assert!(messages.iter().any(|m| m.contains("not between 0 and 1")));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("\"soon\" is not a duration"))
    );
    assert!(messages.iter().any(|m| m.contains("unknown key")));
    assert!(messages.iter().any(|m| m.contains("duplicate")));
}

#[test]
fn syntax_error_and_stray_keys() {
    let errors =
        RulesFile::parse("[[rule]]\nname = \"a\"\nregex = 'x\n", "r.toml").expect_err("syntax");
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].line, errors[0].key.as_str()), (3, "rules"));
    assert!(errors[0].message.starts_with("TOML syntax error"));

    let errors =
        RulesFile::parse("shaping = 1\n[rule]\nname = \"a\"\n", "r.toml").expect_err("shape");
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(got, vec![(1, "shaping"), (2, "rule")]);

    // factor and suspend only where they mean something; delivered is not a rule's.
    let errors = RulesFile::parse(
        "[[rule]]\nname = \"a\"\nregex = 'x'\ncategory = \"blocklisted\"\nfactor = 0.5\n\
         [[rule]]\nname = \"b\"\nregex = 'x'\ncategory = \"rate_limited\"\nsuspend = \"1m\"\n\
         [[rule]]\nname = \"c\"\nregex = 'x'\ncategory = \"delivered\"\n\
         [[rule]]\nname = \"code:5.1.1\"\nregex = 'x'\ncategory = \"other\"\n",
        "r.toml",
    )
    .expect_err("misplaced");
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (5, "rule[0].factor"),
            (10, "rule[1].suspend"),
            (14, "rule[2].category"),
            (16, "rule[3].name")
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn classify_never_panics(reply in "\\PC{0,300}") {
        let v = Classifier::default().classify(&reply);
        prop_assert!(v.reply.len() <= MAX_LEN);
    }

    #[test]
    fn smtp_shaped_replies(
        code in "[2-5][0-5][0-9]",
        sep in "[- ]",
        enhanced in "[245]\\.[0-9]{1,3}\\.[0-9]{1,3}",
        lines in proptest::collection::vec("[ -~\t]{0,80}", 0..6),
    ) {
        let reply: String = lines
            .iter()
            .map(|l| format!("{code}{sep}{enhanced} {l}\r\n"))
            .collect();
        let v = Classifier::default().classify(&reply);
        prop_assert_eq!(v.category == Delivered, code.starts_with('2') && !lines.is_empty());
        let n = normalize(&reply);
        prop_assert_eq!(normalize(&n), n);
    }

    #[test]
    fn normalize_is_idempotent_and_capped(reply in "(\\PC|[\r\n\t ]){0,6000}") {
        let n = normalize(&reply);
        prop_assert!(n.len() <= MAX_LEN);
        prop_assert_eq!(normalize(&n), n.clone());
    }

    #[test]
    fn long_multiline_capped(line in "[a-zé ]{1,200}", count in 1usize..200) {
        let reply = format!("550-5.7.1 {line}\r\n").repeat(count);
        let n = normalize(&reply);
        prop_assert!(n.len() <= MAX_LEN);
        prop_assert_eq!(normalize(&n), n);
    }
}
