//! A replicated counter in a few dozen lines: three replicas on loopback, each with its
//! own data directory, agree on a log of increments through Multi-Paxos.
//!
//! Run with `cargo run -p synod-server --example replicated_counter`.

use bytes::Bytes;
use synod_kv::{SnapshotError, StateMachine};
use synod_server::{Cluster, Consistency, Server, ServerConfig};

/// The state machine: commands are little-endian i64 increments; responses the new total.
#[derive(Default)]
struct Counter {
    total: i64,
    applied: u64,
}

impl StateMachine for Counter {
    fn apply(&mut self, slot: u64, command: &[u8]) -> Bytes {
        self.applied = slot;
        if let Ok(bytes) = <[u8; 8]>::try_from(command) {
            self.total += i64::from_le_bytes(bytes);
        }
        Bytes::copy_from_slice(&self.total.to_le_bytes())
    }
    fn applied(&self) -> u64 {
        self.applied
    }
    fn snapshot(&self) -> Bytes {
        Bytes::copy_from_slice(&[self.total.to_le_bytes(), self.applied.to_le_bytes()].concat())
    }
    fn restore(&mut self, image: &[u8]) -> Result<(), SnapshotError> {
        let field = |at: usize| image.get(at..at + 8).and_then(|b| b.try_into().ok());
        let (Some(total), Some(applied)) = (field(0), field(8)) else {
            return Err(SnapshotError::Malformed(format!("{} bytes", image.len())));
        };
        (self.total, self.applied) = (i64::from_le_bytes(total), u64::from_le_bytes(applied));
        Ok(())
    }
    fn empty_like(&self) -> Self {
        Counter::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let addrs: Vec<_> = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    let cluster = Cluster::from_addrs(&addrs, "counter-example");
    let mut replicas = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let id = index as u64 + 1;
        let config = ServerConfig::new(id, cluster.clone(), data.path().join(format!("n{id}")));
        replicas.push(Server::start_with_listener(config, Counter::default(), listener).await?);
    }
    // Any replica accepts proposals; followers forward them to the leader.
    for (step, replica) in replicas.iter().cycle().take(6).enumerate() {
        let total = replica
            .handle()
            .propose(Bytes::copy_from_slice(&(step as i64 + 1).to_le_bytes()))
            .await?;
        println!(
            "node {} added {}: total {}",
            replica.node_id(),
            step + 1,
            i64::from_le_bytes(total[..].try_into()?)
        );
    }
    for replica in &replicas {
        let total = replica
            .handle()
            .read(Consistency::Linearizable, |c: &Counter| c.total)
            .await?;
        println!("node {} reads {total}", replica.node_id());
    }
    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}
