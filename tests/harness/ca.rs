//! [`TestCa`]: a certificate authority for tests, writing its certificate and the ones it
//! issues into a directory.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

impl TestCa {
    /// A CA named `name` (its subject, and the prefix of its files in `dir`).
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subjects: rcgen's default is the same for every CA.
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
            .expect("CA certificate");
        let ca = TestCa {
            issuer,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        };
        std::fs::write(ca.ca_path(), ca.issuer.pem()).expect("write CA");
        ca
    }

    /// The CA's certificate (PEM).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.crt", self.name))
    }

    /// A certificate for `names` (DNS names or IP addresses): (cert, key) paths.
    pub fn issue(&self, tag: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("certificate");
        let (c, k) = (
            self.dir.join(format!("{}-{tag}.crt", self.name)),
            self.dir.join(format!("{}-{tag}.key", self.name)),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}
