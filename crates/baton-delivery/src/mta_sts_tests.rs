use super::*;

fn txt(records: &[&str]) -> Result<Option<String>, String> {
    parse_txt(&records.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

#[test]
fn txt_records() {
    assert_eq!(
        txt(&["v=STSv1; id=20160831085700Z;"]),
        Ok(Some("20160831085700Z".into()))
    );
    assert_eq!(txt(&["v=STSv1;id=abc"]), Ok(Some("abc".into())));
    assert_eq!(txt(&["v=STSv1; id=abc; ext=1"]), Ok(Some("abc".into())));
    // Other TXT records at the name are not MTA-STS records.
    assert_eq!(
        txt(&["v=spf1 -all", "v=STSv1; id=x1"]),
        Ok(Some("x1".into()))
    );
    assert_eq!(txt(&[]), Ok(None));
    assert_eq!(txt(&["v=spf1 -all"]), Ok(None));
    assert_eq!(txt(&["v=STSv10; id=1"]), Ok(None));
    // Broken or ambiguous: an error (no policy announced).
    assert!(
        txt(&["v=STSv1; id=a", "v=STSv1; id=b"])
            .unwrap_err()
            .contains("2 TXT")
    );
    assert!(txt(&["v=STSv1;"]).unwrap_err().contains("no id"));
    assert!(txt(&["v=STSv1; id="]).is_err());
    assert!(txt(&["v=STSv1; id=has-dash"]).is_err());
    assert!(txt(&["v=STSv1; id=123456789012345678901234567890123"]).is_err());
    assert!(
        txt(&["v=STSv1; id=a; id=b"])
            .unwrap_err()
            .contains("two ids")
    );
    assert!(txt(&["v=STSv1; id=a; v=STSv1"]).is_err());
}

const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

#[test]
fn the_rfc_example_parses_with_crlf_or_lf() {
    let want = Policy {
        mode: Mode::Enforce,
        mx: vec![
            "mail.example.com".into(),
            "*.example.net".into(),
            "backupmx.example.com".into(),
        ],
        max_age: 604800,
    };
    assert_eq!(parse_policy(ENFORCE), Ok(want.clone()));
    assert_eq!(
        parse_policy(&ENFORCE.replace("\r\n", "\n")),
        Ok(want.clone())
    );
    // No final line end, extra spaces after the colon, an unknown key, upper case MX.
    let loose = "version: STSv1\nmode:   enforce\nfoo: bar\nmx: MAIL.example.com.\nmx: *.example.net\nmx: backupmx.example.com\nmax_age:604800";
    assert_eq!(parse_policy(loose), Ok(want));
}

#[test]
fn policies_are_parsed_strictly() {
    let with = |replace: &str, by: &str| parse_policy(&ENFORCE.replace(replace, by));
    assert!(
        with("version: STSv1\r\n", "")
            .unwrap_err()
            .contains("no version")
    );
    assert!(
        with("STSv1", "STSv2")
            .unwrap_err()
            .contains("unsupported version")
    );
    assert!(
        with("mode: enforce\r\n", "")
            .unwrap_err()
            .contains("no mode")
    );
    assert!(with("enforce", "Enforce").unwrap_err().contains("mode"));
    assert!(
        with("max_age: 604800\r\n", "")
            .unwrap_err()
            .contains("no max_age")
    );
    assert!(with("604800", "31557601").unwrap_err().contains("over"));
    assert_eq!(with("604800", "31557600").map(|p| p.max_age), Ok(31557600));
    assert_eq!(with("604800", "0").map(|p| p.max_age), Ok(0));
    assert!(with("604800", "-1").is_err());
    assert!(with("604800", "12345678901").is_err());
    assert!(with("604800", "1 day").is_err());
    assert!(
        with("mode: enforce", "mode: enforce\r\nmode: testing")
            .unwrap_err()
            .contains("twice")
    );
    assert!(with("mx: mail.example.com", "mx: mail..example.com").is_err());
    assert!(with("mx: mail.example.com", "mx: *.*.example.com").is_err());
    assert!(with("mx: mail.example.com", "mx: ").is_err());
    assert!(
        with("mx: mail.example.com", "no colon here")
            .unwrap_err()
            .contains("line 3")
    );
    // mx is required unless the mode is none.
    let none = "version: STSv1\nmode: none\nmax_age: 86400\n";
    assert_eq!(parse_policy(none).map(|p| p.mode), Ok(Mode::None));
    let bare = "version: STSv1\nmode: testing\nmax_age: 86400\n";
    assert!(parse_policy(bare).unwrap_err().contains("without any mx"));
    assert!(parse_policy("").is_err());
    assert!(parse_policy("<html>not a policy</html>").is_err());
}

#[test]
fn a_wildcard_matches_exactly_one_leftmost_label() {
    assert!(mx_matches("mx.sts.test", "mx.sts.test"));
    assert!(mx_matches("mx.sts.test", "MX.sts.test."));
    assert!(!mx_matches("mx.sts.test", "other.sts.test"));
    assert!(!mx_matches("mx.sts.test", "a.mx.sts.test"));
    assert!(mx_matches("*.sts.test", "mx.sts.test"));
    assert!(mx_matches("*.sts.test", "mx2.STS.test"));
    assert!(!mx_matches("*.sts.test", "sts.test"));
    assert!(!mx_matches("*.sts.test", "a.b.sts.test"));
    assert!(!mx_matches("*.sts.test", ".sts.test"));
    assert!(!mx_matches("*.sts.test", "mx.xsts.test"));
    let p = parse_policy(ENFORCE).unwrap();
    assert!(p.permits("mail.example.com"));
    assert!(p.permits("foo.example.net"));
    assert!(!p.permits("foo.bar.example.net"));
    assert!(!p.permits("example.net"));
    assert!(!p.permits("evil.example.com"));
}
