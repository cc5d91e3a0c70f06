//! Shared by the process-level tests: the real `etcdctl`.

use std::process::{Command, Output};

/// True when `etcdctl` runs. Outside CI its absence skips the test loudly; in CI
/// (`CI=true`, where `.ci/run` installs Debian's etcd-client) it fails the test.
pub fn etcdctl_present() -> bool {
    let found = Command::new("etcdctl").arg("version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "etcdctl is missing in CI: .ci/run installs the Debian package etcd-client"
        );
        eprintln!("SKIPPED: etcdctl not found (install the Debian package etcd-client)");
    }
    found
}

/// Runs `etcdctl` (API v3) against `endpoints` (comma-separated).
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=20s")
        .args(args)
        .output()
        .expect("etcdctl runs")
}
