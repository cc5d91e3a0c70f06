//! Partitions between members on loopback, as iptables rules in the OUTPUT chain.
//!
//! All members share 127.0.0.1, and a member's peer connections leave from ephemeral ports,
//! so neither address nor port says which member sent a packet. Each member therefore runs
//! under a user id of its own, and a rule drops the packets a member's uid sends to a peer
//! port (`-m owner --uid-owner`). Each node dials every peer and sends its messages on that
//! connection only, so blocking the direction `from → to` is dropping what `from`'s uid sends
//! to `to`'s peer port. Clients (the chaos process, another uid) are never blocked: a cut-off
//! member keeps its clients, which is where stale reads would show.
//!
//! Every rule carries the comment `synod-chaos-<pid>` and is deleted by its exact spec when
//! its partition heals, and by [`Firewall`]'s `Drop` on every other way out (normal end,
//! Ctrl-C, an error, a panic).

use crate::ChaosError;
use std::process::Command;

/// One DROP rule: packets of `from_uid` to TCP port `to_port`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Block {
    pub from_uid: u32,
    pub to_port: u16,
}

/// The rules this process added and has not removed yet.
pub struct Firewall {
    tag: String,
    installed: Vec<Block>,
}

impl Firewall {
    pub fn new() -> Firewall {
        Firewall {
            tag: tag(),
            installed: Vec::new(),
        }
    }

    /// The rule's arguments after `-A`/`-D`.
    fn spec(&self, block: Block) -> Vec<String> {
        [
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            &block.to_port.to_string(),
            "-m",
            "owner",
            "--uid-owner",
            &block.from_uid.to_string(),
            "-m",
            "comment",
            "--comment",
            &self.tag,
            "-j",
            "DROP",
        ]
        .map(str::to_string)
        .to_vec()
    }

    /// Adds the rule (once: a block already in place is not added twice).
    pub fn add(&mut self, block: Block) -> Result<(), ChaosError> {
        if self.installed.contains(&block) {
            return Ok(());
        }
        iptables("-A", &self.spec(block))?;
        self.installed.push(block);
        Ok(())
    }

    /// Deletes every rule this process added; returns the first failure after trying all.
    pub fn heal(&mut self) -> Result<(), ChaosError> {
        let mut first_error = None;
        for block in std::mem::take(&mut self.installed) {
            if let Err(error) = iptables("-D", &self.spec(block)) {
                tracing::error!(%error, "removing a partition rule failed");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub fn installed(&self) -> usize {
        self.installed.len()
    }
}

impl Default for Firewall {
    fn default() -> Self {
        Firewall::new()
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = self.heal();
    }
}

/// The comment on this process's rules.
pub fn tag() -> String {
    format!("synod-chaos-{}", std::process::id())
}

/// Runs `iptables -w 10 <action> <spec>` (waiting for the xtables lock others may hold).
fn iptables(action: &str, spec: &[String]) -> Result<(), ChaosError> {
    let output = Command::new("iptables")
        .args(["-w", "10", action])
        .args(spec)
        .output()
        .map_err(|error| ChaosError::Fault(format!("running iptables: {error}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ChaosError::Fault(format!(
            "iptables {action} {}: {}",
            spec.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Lines of `iptables -S` carrying this process's tag (none, once it has healed).
pub fn remaining_rules() -> Result<Vec<String>, ChaosError> {
    let output = Command::new("iptables")
        .args(["-w", "10", "-S"])
        .output()
        .map_err(|error| ChaosError::Fault(format!("running iptables -S: {error}")))?;
    let tag = tag();
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&format!("--comment {tag} ")))
        .map(str::to_string)
        .collect())
}

/// Why partitions cannot be injected here, if they cannot: they need root (iptables and
/// members under their own uids) and a working `iptables` with the owner match.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (iptables rules, members under their own uids)".into());
    }
    match Command::new("iptables")
        .args(["-w", "10", "-S", "OUTPUT"])
        .output()
    {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!(
            "iptables -S fails: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Some(format!(
            "iptables not found ({error}); install the Debian package iptables"
        )),
    }
}
