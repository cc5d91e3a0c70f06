//! Total-order broadcast: the simplest state machine, it only remembers what the log delivered.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{codec, Slot, SnapshotError, StateMachine};

/// Delivers every command as a message, in log order.
///
/// `apply` appends `(slot, message)` to the delivered sequence; the response is the message's
/// 0-based position in that sequence as a little-endian `u64`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broadcast {
    applied: Slot,
    delivered: Vec<(Slot, Bytes)>,
}

impl Broadcast {
    pub fn new() -> Self {
        Broadcast::default()
    }

    /// Every message delivered so far, with the slot that carried it, in delivery order.
    pub fn delivered(&self) -> &[(Slot, Bytes)] {
        &self.delivered
    }
}

impl StateMachine for Broadcast {
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Bytes {
        let index = self.delivered.len() as u64;
        self.delivered.push((slot, Bytes::copy_from_slice(command)));
        self.applied = self.applied.max(slot);
        Bytes::copy_from_slice(&index.to_le_bytes())
    }

    fn applied(&self) -> Slot {
        self.applied
    }

    fn snapshot(&self) -> Bytes {
        Bytes::from(codec::encode(self))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let restored: Broadcast = codec::decode(snapshot)?;
        // `apply` keeps `applied` at the highest slot seen, so no message can lie beyond it.
        if let Some(&(slot, _)) = restored.delivered.iter().max_by_key(|(slot, _)| *slot) {
            if slot > restored.applied {
                return Err(SnapshotError::Inconsistent(format!(
                    "message delivered at slot {slot} beyond applied slot {}",
                    restored.applied
                )));
            }
        }
        *self = restored;
        Ok(())
    }
}
