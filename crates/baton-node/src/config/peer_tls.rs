//! Peer TLS (`cluster.tls_cert`, `tls_key`, `tls_ca`: all three or none) and who may
//! reach `cluster.listen`: off loopback only with peer TLS, or `cluster.insecure = true`.

use super::{ClusterConfig, ConfigError};
use baton_cluster::tls::{PeerTls, PemFile, host_of};
use std::path::PathBuf;

impl ClusterConfig {
    /// The peer TLS files, read and checked ([`PeerTls::load`]) when all three keys are
    /// set; `None` when none is. Every problem names its key.
    pub fn peer_tls(&self) -> Result<Option<PeerTls>, Vec<ConfigError>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => {
                PeerTls::load(cert, key, ca, host_of(&self.advertise))
                    .map(Some)
                    .map_err(|errors| {
                        errors
                            .into_iter()
                            .map(|e| ConfigError {
                                key: key_of(e.file).into(),
                                reason: e.reason,
                            })
                            .collect()
                    })
            }
            _ => Err(self.incomplete()),
        }
    }

    /// One error per key missing from a partial triple.
    fn incomplete(&self) -> Vec<ConfigError> {
        let files: [(&str, &Option<PathBuf>); 3] = [
            (key_of(PemFile::Cert), &self.tls_cert),
            (key_of(PemFile::Key), &self.tls_key),
            (key_of(PemFile::Ca), &self.tls_ca),
        ];
        let set: Vec<&str> = files
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(k, _)| *k)
            .collect();
        files
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(key, _)| ConfigError {
                key: key.to_string(),
                reason: format!(
                    "{} set but this is not: peer TLS needs all three of cluster.tls_cert, \
                     cluster.tls_key and cluster.tls_ca (or none)",
                    set.join(" and ") + if set.len() == 1 { " is" } else { " are" }
                ),
            })
            .collect()
    }

    /// Peer TLS complete and usable; a non-loopback `listen` only with it or `insecure`.
    pub(super) fn check_peer_access(&self, errors: &mut Vec<ConfigError>) {
        if let Err(problems) = self.peer_tls() {
            errors.extend(problems);
        }
        let tls = self.tls_cert.is_some() && self.tls_key.is_some() && self.tls_ca.is_some();
        if !self.listen.ip().is_loopback() && !tls && !self.insecure {
            errors.push(ConfigError {
                key: "cluster.listen".into(),
                reason: format!(
                    "{} is not loopback, but peers are not authenticated: anyone who reaches \
                     it can act as a peer. Set cluster.tls_cert, cluster.tls_key and \
                     cluster.tls_ca (peer mutual TLS), or cluster.insecure = true on purpose \
                     (only peers can reach it), or listen on loopback",
                    self.listen
                ),
            });
        }
    }
}

fn key_of(file: PemFile) -> &'static str {
    match file {
        PemFile::Cert => "cluster.tls_cert",
        PemFile::Key => "cluster.tls_key",
        PemFile::Ca => "cluster.tls_ca",
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use std::path::{Path, PathBuf};

    fn keys(e: &[super::ConfigError]) -> Vec<&str> {
        e.iter().map(|e| e.key.as_str()).collect()
    }

    /// A CA in `dir` and a certificate it signed for `names`: (cert, key, ca) paths.
    fn files(dir: &Path, tag: &str, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let paths = (
            dir.join(format!("{tag}.crt")),
            dir.join(format!("{tag}.key")),
            dir.join(format!("{tag}-ca.crt")),
        );
        std::fs::write(&paths.0, cert.pem()).unwrap();
        std::fs::write(&paths.1, key.serialize_pem()).unwrap();
        std::fs::write(&paths.2, ca.pem()).unwrap();
        paths
    }

    fn with_tls(cert: &Path, key: &Path, ca: &Path) -> Config {
        let mut c = Config::dev(None);
        c.cluster.tls_cert = Some(cert.into());
        c.cluster.tls_key = Some(key.into());
        c.cluster.tls_ca = Some(ca.into());
        c
    }

    #[test]
    fn all_three_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _, _) = files(dir.path(), "n", &["127.0.0.1"]);
        let mut c = Config::dev(None);
        c.cluster.tls_cert = Some(cert);
        let e = c.validate().unwrap_err().0;
        assert_eq!(keys(&e), ["cluster.tls_key", "cluster.tls_ca"], "{e:?}");
        assert!(e[0].reason.contains("cluster.tls_cert is set"), "{e:?}");
        assert!(Config::dev(None).cluster.peer_tls().unwrap().is_none());
    }

    #[test]
    fn off_loopback_needs_tls_or_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::dev(None);
        c.cluster.listen = "0.0.0.0:7301".parse().unwrap();
        let e = c.validate().unwrap_err().0;
        assert_eq!(keys(&e), ["cluster.listen"], "{e:?}");
        for says in [
            "cluster.tls_cert",
            "cluster.tls_ca",
            "cluster.insecure = true",
        ] {
            assert!(e[0].reason.contains(says), "{says}: {e:?}");
        }
        c.cluster.insecure = true;
        c.validate().unwrap();

        let (cert, key, ca) = files(dir.path(), "n", &["127.0.0.1"]);
        let mut c = with_tls(&cert, &key, &ca);
        c.cluster.listen = "0.0.0.0:7301".parse().unwrap();
        c.validate().unwrap();
        assert!(c.cluster.peer_tls().unwrap().is_some());
    }

    #[test]
    fn unusable_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = files(dir.path(), "a", &["127.0.0.1"]);
        let (other_cert, other_key, _) = files(dir.path(), "b", &["127.0.0.1"]);
        let (named_cert, named_key, named_ca) = files(dir.path(), "c", &["baton-0.peers.test"]);
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM at all\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let cases: [(&Path, &Path, &Path, &[&str], &str); 5] = [
            (
                &missing,
                &missing,
                &missing,
                &["cluster.tls_cert", "cluster.tls_key", "cluster.tls_ca"],
                "cannot read",
            ),
            (&garbage, &key, &ca, &["cluster.tls_cert"], "no certificate"),
            (
                &cert,
                &garbage,
                &ca,
                &["cluster.tls_key"],
                "no usable private key",
            ),
            (&cert, &key, &garbage, &["cluster.tls_ca"], "no certificate"),
            (
                &cert,
                &other_key,
                &ca,
                &["cluster.tls_key"],
                "cannot be used with",
            ),
        ];
        for (cert, key, ca, expected, says) in cases {
            let e = with_tls(cert, key, ca).validate().unwrap_err().0;
            assert_eq!(keys(&e), expected, "{e:?}");
            assert!(e[0].reason.contains(says), "{says}: {e:?}");
        }
        // Signed by another CA, or not for the advertised host: peers would refuse it.
        for (cert, key, ca) in [
            (&other_cert, &other_key, &ca),
            (&named_cert, &named_key, &named_ca),
        ] {
            let e = with_tls(cert, key, ca).validate().unwrap_err().0;
            assert_eq!(keys(&e), ["cluster.tls_cert"], "{e:?}");
            assert!(e[0].reason.contains("peers would refuse it"), "{e:?}");
        }
        let mut c = with_tls(&named_cert, &named_key, &named_ca);
        c.cluster.advertise = "baton-0.peers.test:7301".into();
        c.validate().unwrap();
    }
}
