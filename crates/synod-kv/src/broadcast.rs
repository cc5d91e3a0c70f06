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
    /// The bytes of every delivered message (for `size_hint`; counted again on restore).
    #[serde(skip)]
    delivered_bytes: u64,
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
        self.delivered_bytes += command.len() as u64;
        self.applied = self.applied.max(slot);
        Bytes::copy_from_slice(&index.to_le_bytes())
    }

    fn applied(&self) -> Slot {
        self.applied
    }

    fn snapshot(&self) -> Bytes {
        Bytes::from(codec::encode_large_as(codec::FORMAT_VERSION, self))
    }

    fn size_hint(&self) -> u64 {
        self.delivered_bytes
    }

    fn empty_like(&self) -> Self {
        Broadcast::new()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let mut restored: Broadcast = codec::decode(snapshot)?;
        restored.delivered_bytes = restored
            .delivered
            .iter()
            .map(|(_, message)| message.len() as u64)
            .sum();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn index(response: &[u8]) -> u64 {
        u64::from_le_bytes(response.try_into().expect("an 8-byte index"))
    }

    #[test]
    fn messages_are_delivered_in_log_order_with_their_index() {
        let mut broadcast = Broadcast::new();
        assert_eq!(broadcast.applied(), 0);
        // Slot 2 carried two messages, slot 3 was a no-op, slot 4 one message.
        assert_eq!(index(&broadcast.apply(1, b"first")), 0);
        assert_eq!(index(&broadcast.apply(2, b"second")), 1);
        assert_eq!(index(&broadcast.apply(2, b"")), 2);
        assert_eq!(index(&broadcast.apply(4, &[0xff, 0])), 3);
        assert_eq!(broadcast.applied(), 4);
        let expected: Vec<(Slot, Bytes)> = vec![
            (1, Bytes::from_static(b"first")),
            (2, Bytes::from_static(b"second")),
            (2, Bytes::new()),
            (4, Bytes::from_static(&[0xff, 0])),
        ];
        assert_eq!(broadcast.delivered(), expected.as_slice());
    }

    #[test]
    fn a_restored_broadcast_continues_where_the_snapshot_left_off() {
        let mut original = Broadcast::new();
        original.apply(1, b"a");
        original.apply(3, b"b");
        let snapshot = original.snapshot();
        assert_eq!(snapshot[0], crate::FORMAT_VERSION);
        let mut restored = Broadcast::new();
        restored.apply(9, b"to be replaced");
        restored.restore(&snapshot).unwrap();
        assert_eq!(restored, original);
        assert_eq!(restored.apply(4, b"c"), original.apply(4, b"c"));
        assert_eq!(restored.delivered().len(), 3);
        assert_eq!(restored.snapshot(), original.snapshot());
    }

    #[test]
    fn bad_broadcast_snapshots_are_refused_and_change_nothing() {
        let mut broadcast = Broadcast::new();
        broadcast.apply(1, b"keep");
        let before = broadcast.clone();
        let good = broadcast.snapshot();
        assert_eq!(broadcast.restore(&[]), Err(SnapshotError::Empty));
        assert_eq!(
            broadcast.restore(&[9, 0]),
            Err(SnapshotError::UnknownVersion(9))
        );
        for cut in 1..good.len() {
            assert!(
                broadcast.restore(&good[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        // Well-formed, but a message sits beyond the applied slot.
        let impossible = Broadcast {
            applied: 1,
            delivered: vec![(2, Bytes::new())],
            delivered_bytes: 0,
        };
        assert!(matches!(
            broadcast.restore(&codec::encode(&impossible)),
            Err(SnapshotError::Inconsistent(_))
        ));
        assert_eq!(broadcast, before);
    }

    #[test]
    fn its_size_counts_every_delivered_message_and_survives_a_restore() {
        let mut broadcast = Broadcast::new();
        broadcast.apply(1, b"hello");
        broadcast.apply(2, b"world!");
        assert_eq!(broadcast.size_hint(), 11);
        let mut restored = Broadcast::new();
        restored.restore(&broadcast.snapshot()).expect("restore");
        assert_eq!(restored.size_hint(), 11);
        assert_eq!(restored, broadcast);
    }

    #[test]
    fn state_machines_can_be_driven_as_trait_objects() {
        let mut machines: Vec<Box<dyn StateMachine>> =
            vec![Box::new(Broadcast::new()), Box::new(crate::KvStore::new())];
        for machine in &mut machines {
            machine.apply(1, b"not a kv command, but fine for a broadcast");
            assert_eq!(machine.applied(), 1);
        }
    }
}
