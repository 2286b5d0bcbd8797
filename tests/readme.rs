//! The README's "Send a test message", run as a reader pastes it: the fenced blocks
//! marked `sh readme-test` between that heading and the next, in order, in one `bash -e`
//! (a failing command fails the test), in a fresh directory laid out like the repository
//! root. It asserts that the message reached the sink, that `batonctl` showed it
//! delivered, and that the last block left nothing behind.
//!
//! What differs from a reader's shell, and why:
//! - `cargo build --release ...` is not run: the workspace binaries cargo built for the
//!   tests are used instead, through `target/release` in the scratch directory, a
//!   symlink to their directory (so `export PATH="$PWD/target/release:$PATH"` runs as
//!   written). Building the release profile inside a test would take minutes.
//! - The scratch directory holds only `cluster/examples/local-sink.toml` (a copy) and
//!   that symlink: the commands may use nothing else from the repository.
//! - It runs in private network, PID and mount namespaces (`unshare`, so as root, like
//!   the partition test): the example's fixed ports (2525, 7301, 7401, 9401, 2526) cannot
//!   clash with another test or node on this machine, and every process the blocks
//!   start in the background dies with the namespace, whatever happens.
//! - An `echo` marks the start of each block in the output; the environment is empty
//!   but for `PATH` and `HOME`.

use baton_tests::bin;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HEADING: &str = "## Send a test message";
const MARK: &str = "```sh readme-test";
/// Everything, build skipped: the node starts in a second or two.
const DEADLINE: Duration = Duration::from_secs(120);

/// The marked blocks of the section, in order. Panics on an unmarked shell block there
/// (it would silently not be tested) or a missing section.
fn blocks(readme: &str) -> Vec<String> {
    let mut lines = readme.lines().skip_while(|l| l.trim_end() != HEADING);
    assert!(lines.next().is_some(), "no {HEADING:?} in README.md");
    let mut blocks = Vec::new();
    let mut open: Option<(bool, Vec<&str>)> = None;
    for line in lines {
        match &mut open {
            None if line.starts_with('#') => break,
            None if line.starts_with("```") => {
                let marked = line.trim_end() == MARK;
                let info = line.trim_start_matches('`').trim();
                assert!(
                    marked || !["sh", "bash", "shell", "console"].contains(&info),
                    "a shell block in {HEADING:?} is not marked {MARK:?}: {line:?}"
                );
                open = Some((marked, Vec::new()));
            }
            None => {}
            Some((marked, body)) if line.trim_end() == "```" => {
                if *marked {
                    blocks.push(body.join("\n"));
                }
                open = None;
            }
            Some((_, body)) => body.push(line),
        }
    }
    assert!(open.is_none(), "a block in {HEADING:?} is not closed");
    blocks
}

/// The script: each block after a marker, `cargo build` lines left out (see above).
fn script(blocks: &[String]) -> String {
    let mut out = String::new();
    let mut builds = 0;
    for (i, block) in blocks.iter().enumerate() {
        out.push_str(&format!("echo '@@ block {i}'; echo '@@ block {i}' >&2\n"));
        for line in block.lines() {
            if line.trim_start().starts_with("cargo build") {
                builds += 1;
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(
        builds, 1,
        "one `cargo build` line, replaced by the tests' binaries"
    );
    out
}

/// Kills the process group it names (the walkthrough and all it started) when dropped.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn send_a_test_message_as_the_readme_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = blocks(&readme);
    assert!(blocks.len() >= 5, "too few blocks: {blocks:?}");
    let script = script(&blocks);

    let scratch = tempfile::tempdir().expect("tempdir");
    let examples = scratch.path().join("cluster/examples");
    std::fs::create_dir_all(&examples).expect("mkdir");
    std::fs::copy(
        root.join("cluster/examples/local-sink.toml"),
        examples.join("local-sink.toml"),
    )
    .expect("copy the example config");
    let bins = bin("batond").parent().expect("bin dir").to_path_buf();
    for name in ["batonctl", "baton-sink"] {
        bin(name);
    }
    std::fs::create_dir(scratch.path().join("target")).expect("mkdir target");
    std::os::unix::fs::symlink(&bins, scratch.path().join("target/release")).expect("symlink");

    let out = tempfile::tempdir().expect("tempdir");
    let script_path = out.path().join("walkthrough.sh");
    std::fs::write(&script_path, &script).expect("write the script");
    let stdout_path = out.path().join("stdout");
    let stderr_path = out.path().join("stderr");
    let started = Instant::now();
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("timeout")
            .args(["--kill-after=5", &format!("{}", DEADLINE.as_secs() + 10)])
            .args([
                "unshare",
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
            ])
            .args(["bash", "-c", "ip link set lo up && exec bash -e \"$0\""])
            .arg(&script_path)
            .current_dir(scratch.path())
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", scratch.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .process_group(0)
            .spawn()
            .expect("run the walkthrough (needs timeout, unshare and bash)")
    };
    let _group = Group(child.id());
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the walkthrough did not finish in {DEADLINE:?}\nstdout:\n{}\nstderr:\n{}",
            read(&stdout_path),
            read(&stderr_path)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = read(&stdout_path);
    let stderr = read(&stderr_path);
    eprintln!(
        "walkthrough ran in {:?}\n--- script:\n{script}--- stdout:\n{stdout}--- stderr:\n{stderr}",
        started.elapsed()
    );
    assert!(
        status.success(),
        "the walkthrough failed ({status}): see its output above (it needs root, for \
         unshare, and swaks and curl)"
    );

    assert!(stdout.contains("\nready\n"), "/readyz was awaited");
    let id = stdout
        .lines()
        .find_map(|l| l.split("250 2.0.0 Ok: queued as ").nth(1))
        .map(|id| id.trim().to_string())
        .expect("swaks got 250 ... queued as <ID>");
    // batonctl events: the message received, then delivered to the sink.
    let delivered = stdout
        .lines()
        .find(|l| l.contains(" delivered ") && l.contains(&id))
        .unwrap_or_else(|| panic!("no delivered event for {id} in batonctl's output"));
    assert!(
        delivered.contains("bob@example.net") && delivered.contains("accepted as 1"),
        "{delivered}"
    );
    // cat: the sink's copy, with Baton's Received: line naming the same id.
    for want in [
        "X-Sink-Mail-From: alice@example.com",
        "X-Sink-Rcpt-To: bob@example.net",
        "Subject: hello from Baton",
        &format!("by relay.localhost (Baton) with ESMTP id {id}"),
    ] {
        assert!(stdout.contains(want), "{want:?} not printed");
    }
    assert!(
        stderr.contains("baton-sink: accepted 1 from=<alice@example.com> rcpts=bob@example.net"),
        "the sink said nothing"
    );
    // The last block cleaned up: only what the test put there is left.
    let mut left: Vec<String> = std::fs::read_dir(scratch.path())
        .expect("read scratch")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["cluster", "target"],
        "left behind in the scratch dir"
    );
}
