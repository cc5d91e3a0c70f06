//! What goes into the replicated log, and the lin-kv state machine every replica applies
//! to it in slot order.
//!
//! A log command is a small JSON document: either a `multi_paxos_propose` value, or a
//! lin-kv request with the identity of the client request it answers (the node that
//! received it, the client, the client's `msg_id`: for the log's readers; the replica's
//! client sessions are what make a retried command apply once). In the log each command
//! travels inside a `synod_replica::Proposal`. [`KvStore`] is the
//! [`synod_kv::StateMachine`] the replica applies them to; its response is a
//! [`KvResult`], encoded, which the replica hands back to the node that proposed it.

use crate::errors::{KEY_DOES_NOT_EXIST, MALFORMED_REQUEST, PRECONDITION_FAILED};
use crate::json::Json;
use bytes::Bytes;
use std::collections::BTreeMap;
use synod_kv::{Slot, SnapshotError, StateMachine};

/// A lin-kv operation, as Maelstrom's workload sends it.
#[derive(Clone, PartialEq, Debug)]
pub enum KvOp {
    Read {
        key: Json,
    },
    Write {
        key: Json,
        value: Json,
    },
    /// Compare-and-set. `create_if_not_exists` (Maelstrom's own KV services accept it)
    /// creates a missing key instead of failing with code 20.
    Cas {
        key: Json,
        from: Json,
        to: Json,
        create_if_not_exists: bool,
    },
}

impl KvOp {
    /// From a request body (`type` is read, write or cas).
    pub fn from_body(body: &Json) -> Result<KvOp, String> {
        let field = |name: &str| {
            body.get(name)
                .cloned()
                .ok_or_else(|| format!("missing field `{name}`"))
        };
        match body.get("type").and_then(Json::as_str) {
            Some("read") => Ok(KvOp::Read { key: field("key")? }),
            Some("write") => Ok(KvOp::Write {
                key: field("key")?,
                value: field("value")?,
            }),
            Some("cas") => Ok(KvOp::Cas {
                key: field("key")?,
                from: field("from")?,
                to: field("to")?,
                create_if_not_exists: body
                    .get("create_if_not_exists")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
            }),
            other => Err(format!("not a lin-kv operation: {other:?}")),
        }
    }

    /// The request body form: `{"type": "write", "key": 1, "value": 2}`.
    pub fn to_json(&self) -> Json {
        match self {
            KvOp::Read { key } => Json::object([("type", Json::str("read")), ("key", key.clone())]),
            KvOp::Write { key, value } => Json::object([
                ("type", Json::str("write")),
                ("key", key.clone()),
                ("value", value.clone()),
            ]),
            KvOp::Cas {
                key,
                from,
                to,
                create_if_not_exists,
            } => {
                let mut body = Json::object([
                    ("type", Json::str("cas")),
                    ("key", key.clone()),
                    ("from", from.clone()),
                    ("to", to.clone()),
                ]);
                if *create_if_not_exists {
                    body.push("create_if_not_exists", Json::Bool(true));
                }
                body
            }
        }
    }
}

/// One command in a log slot.
#[derive(Clone, PartialEq, Debug)]
pub enum Command {
    /// A `multi_paxos_propose` value.
    Propose { value: Json },
    /// A lin-kv request received by node `origin` from `client` as `msg_id`.
    Kv {
        origin: String,
        client: String,
        msg_id: u64,
        op: KvOp,
    },
}

impl Command {
    pub fn encode(&self) -> Bytes {
        let json = match self {
            Command::Propose { value } => {
                Json::object([("kind", Json::str("propose")), ("value", value.clone())])
            }
            Command::Kv {
                origin,
                client,
                msg_id,
                op,
            } => Json::object([
                ("kind", Json::str("kv")),
                ("origin", Json::str(origin.clone())),
                ("client", Json::str(client.clone())),
                ("msg_id", Json::UInt(*msg_id)),
                ("op", op.to_json()),
            ]),
        };
        Bytes::from(json.to_python_string())
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
        let json = Json::parse(text).map_err(|e| format!("not JSON: {e}"))?;
        match json.get("kind").and_then(Json::as_str) {
            Some("propose") => Ok(Command::Propose {
                value: json.get("value").cloned().unwrap_or(Json::Null),
            }),
            Some("kv") => {
                let text_field = |name: &str| {
                    json.get(name)
                        .and_then(Json::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| format!("kv command without `{name}`"))
                };
                Ok(Command::Kv {
                    origin: text_field("origin")?,
                    client: text_field("client")?,
                    msg_id: json
                        .get("msg_id")
                        .and_then(Json::as_u64)
                        .ok_or("kv command without `msg_id`")?,
                    op: KvOp::from_body(json.get("op").ok_or("kv command without `op`")?)?,
                })
            }
            other => Err(format!("unknown command kind {other:?}")),
        }
    }

    /// How `multi_paxos_log` shows the command: a proposal's value, or a lin-kv
    /// request body.
    pub fn display_value(&self) -> Json {
        match self {
            Command::Propose { value } => value.clone(),
            Command::Kv { op, .. } => op.to_json(),
        }
    }
}

/// The outcome of applying one lin-kv operation.
#[derive(Clone, PartialEq, Debug)]
pub enum KvResult {
    ReadOk(Json),
    WriteOk,
    CasOk,
    Error { code: u64, text: String },
}

impl KvResult {
    /// The state machine's response bytes: the reply body's `type` and fields, as JSON.
    pub fn encode(&self) -> Bytes {
        let (kind, fields) = self.reply();
        let mut pairs = vec![("type".to_string(), Json::str(kind))];
        pairs.extend(fields);
        Bytes::from(Json::Object(pairs).to_python_string())
    }

    /// Reads a response made by [`KvResult::encode`].
    pub fn decode(bytes: &[u8]) -> Result<KvResult, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
        let json = Json::parse(text).map_err(|e| format!("not JSON: {e}"))?;
        match json.get("type").and_then(Json::as_str) {
            Some("read_ok") => Ok(KvResult::ReadOk(
                json.get("value")
                    .cloned()
                    .ok_or("read_ok without `value`")?,
            )),
            Some("write_ok") => Ok(KvResult::WriteOk),
            Some("cas_ok") => Ok(KvResult::CasOk),
            Some("error") => Ok(KvResult::Error {
                code: json
                    .get("code")
                    .and_then(Json::as_u64)
                    .ok_or("error without `code`")?,
                text: json
                    .get("text")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string(),
            }),
            other => Err(format!("unknown response type {other:?}")),
        }
    }

    /// The reply body: its `type` and the fields after `in_reply_to`.
    pub fn reply(&self) -> (&'static str, Vec<(String, Json)>) {
        match self {
            KvResult::ReadOk(value) => ("read_ok", vec![("value".to_string(), value.clone())]),
            KvResult::WriteOk => ("write_ok", vec![]),
            KvResult::CasOk => ("cas_ok", vec![]),
            KvResult::Error { code, text } => (
                "error",
                vec![
                    ("code".to_string(), Json::UInt(*code)),
                    ("text".to_string(), Json::str(text.clone())),
                ],
            ),
        }
    }
}

/// The format byte in front of a [`KvStore`] snapshot.
pub const SNAPSHOT_FORMAT: u8 = 1;

/// The lin-kv state machine: a map from JSON keys to JSON values.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct KvStore {
    /// Keyed by the key's canonical rendering, so `1` and `"1"` are different keys.
    values: BTreeMap<String, Json>,
    /// The last slot applied.
    applied: Slot,
}

impl KvStore {
    /// Applies one operation.
    pub fn execute(&mut self, op: &KvOp) -> KvResult {
        match op {
            KvOp::Read { key } => self.read(key),
            KvOp::Write { key, value } => {
                self.values.insert(canonical(key), value.clone());
                KvResult::WriteOk
            }
            KvOp::Cas {
                key,
                from,
                to,
                create_if_not_exists,
            } => match self.values.get_mut(&canonical(key)) {
                Some(current) if json_equal(current, from) => {
                    *current = to.clone();
                    KvResult::CasOk
                }
                Some(current) => KvResult::Error {
                    code: PRECONDITION_FAILED,
                    text: format!("expected {from}, but had {current}"),
                },
                None if *create_if_not_exists => {
                    self.values.insert(canonical(key), to.clone());
                    KvResult::CasOk
                }
                None => missing(key),
            },
        }
    }

    /// A read against the current state (the replica says when that is linearizable).
    pub fn read(&self, key: &Json) -> KvResult {
        match self.get(key) {
            Some(value) => KvResult::ReadOk(value.clone()),
            None => missing(key),
        }
    }

    pub fn get(&self, key: &Json) -> Option<&Json> {
        self.values.get(&canonical(key))
    }
}

/// The replica applies the log through this: lin-kv commands change the map and answer
/// with their [`KvResult`]; a `multi_paxos_propose` value changes nothing (empty
/// response); bytes that are no command answer with code 12.
impl StateMachine for KvStore {
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Bytes {
        self.applied = self.applied.max(slot);
        match Command::decode(command) {
            Ok(Command::Kv { op, .. }) => self.execute(&op).encode(),
            Ok(Command::Propose { .. }) => Bytes::new(),
            Err(error) => KvResult::Error {
                code: MALFORMED_REQUEST,
                text: format!("undecodable log command: {error}"),
            }
            .encode(),
        }
    }

    fn applied(&self) -> Slot {
        self.applied
    }

    /// [`SNAPSHOT_FORMAT`], then `{"applied": slot, "values": [[canonical key, value], ...]}`.
    fn snapshot(&self) -> Bytes {
        let values = self
            .values
            .iter()
            .map(|(key, value)| Json::Array(vec![Json::str(key.clone()), value.clone()]))
            .collect();
        let image = Json::object([
            ("applied", Json::UInt(self.applied)),
            ("values", Json::Array(values)),
        ]);
        let mut bytes = vec![SNAPSHOT_FORMAT];
        bytes.extend_from_slice(image.to_python_string().as_bytes());
        Bytes::from(bytes)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let (&format, body) = snapshot.split_first().ok_or(SnapshotError::Empty)?;
        if format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::UnknownVersion(format));
        }
        let malformed = |what: String| SnapshotError::Malformed(what);
        let text = std::str::from_utf8(body).map_err(|e| malformed(e.to_string()))?;
        let image = Json::parse(text).map_err(|e| malformed(e.to_string()))?;
        let applied = image
            .get("applied")
            .and_then(Json::as_u64)
            .ok_or_else(|| malformed("no `applied` slot".into()))?;
        let pairs = image
            .get("values")
            .and_then(Json::as_array)
            .ok_or_else(|| malformed("no `values` list".into()))?;
        let mut values = BTreeMap::new();
        for pair in pairs {
            let (Some(Json::Str(key)), Some(value), 2) = (
                pair.as_array().and_then(|p| p.first()),
                pair.as_array().and_then(|p| p.get(1)),
                pair.as_array().map_or(0, <[Json]>::len),
            ) else {
                return Err(malformed(format!("not a [key, value] pair: {pair}")));
            };
            // The key is stored as its canonical rendering: it must be one.
            let canonical_key = Json::parse(key).map(|k| canonical(&k));
            if canonical_key.as_deref().ok() != Some(key.as_str()) {
                return Err(SnapshotError::Inconsistent(format!(
                    "key {key:?} is not a canonical JSON rendering"
                )));
            }
            values.insert(key.clone(), value.clone());
        }
        *self = KvStore { values, applied };
        Ok(())
    }

    fn empty_like(&self) -> Self {
        KvStore::default()
    }
}

fn missing(key: &Json) -> KvResult {
    KvResult::Error {
        code: KEY_DOES_NOT_EXIST,
        text: format!("key {key} does not exist"),
    }
}

fn canonical(key: &Json) -> String {
    key.to_python_string()
}

/// Equality as Python's `==` sees decoded JSON: numbers by value, objects ignoring
/// key order.
pub fn json_equal(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, value)| b.get(key).is_some_and(|other| json_equal(value, other)))
        }
        (Json::UInt(x), Json::UInt(y)) => x == y,
        (Json::Int(x), Json::Int(y)) => x == y,
        (Json::UInt(_), Json::Int(_)) | (Json::Int(_), Json::UInt(_)) => false,
        (Json::Float(x), other) | (other, Json::Float(x)) => match other {
            Json::Float(y) => x == y,
            Json::UInt(y) => *x == *y as f64,
            Json::Int(y) => *x == *y as f64,
            _ => false,
        },
        _ => a == b,
    }
}

/// Checks a request's fields before it goes into the log, so a malformed request is
/// refused (code 12) instead of taking a slot.
pub fn parse_request(body: &Json) -> Result<KvOp, (u64, String)> {
    KvOp::from_body(body).map_err(|text| (MALFORMED_REQUEST, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(text: &str) -> KvOp {
        KvOp::from_body(&Json::parse(text).unwrap()).unwrap()
    }

    #[test]
    fn read_write_cas_follow_maelstrom_semantics() {
        let mut store = KvStore::default();
        assert!(matches!(
            store.execute(&op(r#"{"type":"read","key":1}"#)),
            KvResult::Error { code: 20, .. }
        ));
        assert!(matches!(
            store.execute(&op(r#"{"type":"cas","key":1,"from":1,"to":2}"#)),
            KvResult::Error { code: 20, .. }
        ));
        assert_eq!(
            store.execute(&op(r#"{"type":"write","key":1,"value":3}"#)),
            KvResult::WriteOk
        );
        assert!(matches!(
            store.execute(&op(r#"{"type":"cas","key":1,"from":1,"to":2}"#)),
            KvResult::Error { code: 22, .. }
        ));
        assert_eq!(
            store.execute(&op(r#"{"type":"cas","key":1,"from":3,"to":4}"#)),
            KvResult::CasOk
        );
        assert_eq!(
            store.execute(&op(r#"{"type":"read","key":1}"#)),
            KvResult::ReadOk(Json::UInt(4))
        );
        // "1" is another key than 1.
        assert!(matches!(
            store.execute(&op(r#"{"type":"read","key":"1"}"#)),
            KvResult::Error { code: 20, .. }
        ));
        assert_eq!(
            store.execute(&op(
                r#"{"type":"cas","key":9,"from":0,"to":1,"create_if_not_exists":true}"#
            )),
            KvResult::CasOk
        );
        assert_eq!(store.get(&Json::UInt(9)), Some(&Json::UInt(1)));
    }

    #[test]
    fn commands_round_trip_through_their_encoding() {
        let commands = [
            Command::Propose {
                value: Json::parse(r#"{"b":1,"a":[1.5,"é"]}"#).unwrap(),
            },
            Command::Kv {
                origin: "n2".into(),
                client: "c7".into(),
                msg_id: 42,
                op: op(r#"{"type":"cas","key":"k","from":1,"to":null}"#),
            },
        ];
        for command in commands {
            assert_eq!(Command::decode(&command.encode()).unwrap(), command);
        }
        assert!(Command::decode(b"\xff").is_err());
        assert!(Command::decode(br#"{"kind":"other"}"#).is_err());
    }

    fn kv(text: &str) -> Bytes {
        Command::Kv {
            origin: "n1".into(),
            client: "c1".into(),
            msg_id: 1,
            op: op(text),
        }
        .encode()
    }

    #[test]
    fn the_replica_applies_log_commands_and_gets_encoded_results_back() {
        let mut store = KvStore::default();
        let written = store.apply(
            1,
            &kv(r#"{"type":"write","key":1,"value":{"b":1,"a":2.5}}"#),
        );
        assert_eq!(KvResult::decode(&written), Ok(KvResult::WriteOk));
        let read = store.apply(2, &kv(r#"{"type":"read","key":1}"#));
        assert_eq!(
            KvResult::decode(&read),
            Ok(KvResult::ReadOk(Json::parse(r#"{"b":1,"a":2.5}"#).unwrap()))
        );
        let mismatch = store.apply(3, &kv(r#"{"type":"cas","key":1,"from":0,"to":1}"#));
        assert!(matches!(
            KvResult::decode(&mismatch),
            Ok(KvResult::Error { code: 22, .. })
        ));
        // A multi_paxos_propose value changes nothing; garbage is answered, not applied.
        let proposed = Command::Propose {
            value: Json::str("cmd"),
        };
        assert!(store.apply(4, &proposed.encode()).is_empty());
        let garbage = store.apply(5, b"\xff");
        assert!(matches!(
            KvResult::decode(&garbage),
            Ok(KvResult::Error { code: 12, .. })
        ));
        assert_eq!(store.applied(), 5);
        assert_eq!(store.read(&Json::UInt(2)), missing(&Json::UInt(2)));
    }

    #[test]
    fn snapshots_round_trip_and_refuse_garbage() {
        let mut store = KvStore::default();
        store.apply(3, &kv(r#"{"type":"write","key":1,"value":[1.5,"é",null]}"#));
        store.apply(
            4,
            &kv(r#"{"type":"write","key":"1","value":{"z":1,"a":-2}}"#),
        );
        let mut restored = store.empty_like();
        restored.restore(&store.snapshot()).unwrap();
        assert_eq!(restored, store);
        assert_eq!(restored.applied(), 4);
        assert_eq!(restored.snapshot(), store.snapshot());

        let mut untouched = store.clone();
        assert_eq!(untouched.restore(b""), Err(SnapshotError::Empty));
        assert_eq!(
            untouched.restore(&[9, b'{', b'}']),
            Err(SnapshotError::UnknownVersion(9))
        );
        assert!(matches!(
            untouched.restore(b"\x01{\"applied\": 1}"),
            Err(SnapshotError::Malformed(_))
        ));
        assert!(matches!(
            untouched.restore(b"\x01{\"applied\": 1, \"values\": [[\"{\\\"a\\\":1}\", 2]]}"),
            Err(SnapshotError::Inconsistent(_))
        ));
        assert_eq!(untouched, store, "a refused snapshot changes nothing");
    }

    #[test]
    fn json_equality_is_pythons() {
        let parse = |t: &str| Json::parse(t).unwrap();
        assert!(json_equal(&parse("1"), &parse("1.0")));
        assert!(json_equal(
            &parse(r#"{"a":1,"b":2}"#),
            &parse(r#"{"b":2,"a":1}"#)
        ));
        assert!(!json_equal(&parse("1"), &parse(r#""1""#)));
        assert!(!json_equal(&parse("[1,2]"), &parse("[2,1]")));
    }
}
