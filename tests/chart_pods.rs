//! The Helm chart's StatefulSet pods run for real under podman, with no Kubernetes API
//! server: `cluster/build-image.sh` builds the static musl binaries and the image
//! `localhost/baton:dev`, then `tests/chart/pods.py` renders the chart, plays the
//! StatefulSet controller and the kubelet for its pods in a network namespace of its own
//! and runs the scenarios (one cluster forms, delivery, the leader's pod replaced while
//! mail flows, pod 0 rejoining with an empty volume, scaling 3 → 5 → 3 with the
//! pre-upgrade scale-down Job); see that script's doc. Needs root, like the partition test.
//!
//! The musl build runs in `$CARGO_TARGET_DIR`, or `target/musl` when that is not set: a
//! directory (and profile) of its own, so it never waits on the lock of the cargo that
//! runs this test. It takes minutes the first time. Where buildah is missing, only the
//! binaries are built and pods.py falls back to plain processes (it says so loudly).

use baton_tests::bin;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn run(what: &str, cmd: &mut Command) {
    let started = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    println!(
        "---- {what} ({:.1} s)\n{}{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {}", out.status);
}

#[test]
fn chart_pods_under_podman() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository root")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("musl"));
    let buildah = Command::new("buildah")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut build = Command::new(root.join("cluster/build-image.sh"));
    // The variables cargo sets for this test (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...) would
    // reach the inner cargo: ring's build script tracks CARGO_MANIFEST_DIR, so the musl
    // build would be redone (two minutes) after every build from a shell, and back.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "CARGO_MANIFEST_DIR"
            || name == "CARGO_MANIFEST_PATH"
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
            || name == "CARGO_RUSTC_CURRENT_DIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
        {
            build.env_remove(name.as_ref());
        }
    }
    if !buildah {
        println!("!!! no buildah here: building the binaries only (pods.py will fall back)");
        build.arg("--binaries-only");
    }
    run(
        "cluster/build-image.sh",
        build.current_dir(&root).env("CARGO_TARGET_DIR", &target),
    );
    run(
        "tests/chart/pods.py",
        Command::new("python3")
            .arg("tests/chart/pods.py")
            .current_dir(&root)
            .env(
                "BIN_DIR",
                target.join("x86_64-unknown-linux-musl").join("release"),
            )
            .env("BATON_SINK", bin("baton-sink")),
    );
}
