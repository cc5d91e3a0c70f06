//! # synod-bench: Synod side by side with etcd and the machine's own limits
//!
//! `synod bench cluster` ([`cluster::run`]) starts a three-node Synod cluster, a
//! three-node etcd cluster where `etcd` is installed, and a single unreplicated Synod
//! node with fsync off (the ceiling), all on loopback, and drives each with the same
//! closed-loop etcd v3 gRPC load generator ([`load`]): put, linearizable and serializable
//! get, and compare-and-set, at 1, 16, 64 and 256 clients. In the same run it measures the
//! disk's fdatasync latency and the loopback round trip ([`machine`]), and kills each
//! cluster's leader under load. The results ([`report`]) print as a markdown table and
//! are written as JSON, an SVG chart ([`chart`]) and a README section ([`write_outputs`]).
//!
//! `synod bench watch` ([`watch::run`]) measures etcd Watch event latency, from a put's
//! acknowledgement to its watchers, at 1, 100 and 10,000 watchers on one member.
//!
//! `synod bench leases` ([`leases::run`]) measures keep-alives per second with 10,000 leases
//! kept alive by one client, and how late leases expire after the leader is killed.

pub mod breakdown;
pub mod chart;
pub mod cluster;
pub mod error;
pub mod leases;
pub mod load;
pub mod machine;
pub mod process;
pub mod report;
pub mod timeline;
pub mod watch;

pub use cluster::{run, Bar, ClusterOptions, Plain, Progress, Quiet};
pub use error::BenchError;
pub use report::ClusterReport;

use std::path::{Path, PathBuf};

/// Writes `cluster.json`, `cluster.svg` and the generated section of `README.md` into
/// `dir` (text outside the section's markers is kept). Returns the paths written.
pub fn write_outputs(report: &ClusterReport, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    std::fs::create_dir_all(dir)
        .map_err(|error| BenchError::new(format!("creating {}: {error}", dir.display())))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, BenchError> {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|error| BenchError::new(format!("writing {}: {error}", path.display())))?;
        Ok(path)
    };
    let json = write("cluster.json", &(report.to_json() + "\n"))?;
    let svg = write("cluster.svg", &chart::svg(report))?;
    let mut written = vec![json, svg];
    if !report.breakdowns.is_empty() {
        written.push(write("breakdown.svg", &breakdown::svg(&report.breakdowns))?);
    }
    if !report.timelines.is_empty() {
        written.push(write("timeline.svg", &timeline::svg(&report.timelines))?);
    }
    let readme_path = dir.join("README.md");
    let existing = std::fs::read_to_string(&readme_path).ok();
    let readme = write(
        "README.md",
        &report::splice_readme(existing.as_deref(), &report.readme_section()),
    )?;
    written.push(readme);
    Ok(written)
}
