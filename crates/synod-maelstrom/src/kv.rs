//! What goes into the replicated log, and the lin-kv state machine every replica applies
//! to it in slot order.
//!
//! A log command is a small JSON document: either a `multi_paxos_propose` value, or a
//! lin-kv request with the identity of the client request it answers (the node that
//! received it, the client, the client's `msg_id`). Every replica applies every
//! command; only the node that received the request replies to the client.

use crate::errors::{KEY_DOES_NOT_EXIST, MALFORMED_REQUEST, PRECONDITION_FAILED};
use crate::json::Json;
use bytes::Bytes;
use std::collections::BTreeMap;

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

/// The lin-kv state machine: a map from JSON keys to JSON values.
#[derive(Clone, Default, Debug)]
pub struct KvStore {
    /// Keyed by the key's canonical rendering, so `1` and `"1"` are different keys.
    values: BTreeMap<String, Json>,
}

impl KvStore {
    pub fn apply(&mut self, op: &KvOp) -> KvResult {
        match op {
            KvOp::Read { key } => match self.values.get(&canonical(key)) {
                Some(value) => KvResult::ReadOk(value.clone()),
                None => missing(key),
            },
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

    pub fn get(&self, key: &Json) -> Option<&Json> {
        self.values.get(&canonical(key))
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
            store.apply(&op(r#"{"type":"read","key":1}"#)),
            KvResult::Error { code: 20, .. }
        ));
        assert!(matches!(
            store.apply(&op(r#"{"type":"cas","key":1,"from":1,"to":2}"#)),
            KvResult::Error { code: 20, .. }
        ));
        assert_eq!(
            store.apply(&op(r#"{"type":"write","key":1,"value":3}"#)),
            KvResult::WriteOk
        );
        assert!(matches!(
            store.apply(&op(r#"{"type":"cas","key":1,"from":1,"to":2}"#)),
            KvResult::Error { code: 22, .. }
        ));
        assert_eq!(
            store.apply(&op(r#"{"type":"cas","key":1,"from":3,"to":4}"#)),
            KvResult::CasOk
        );
        assert_eq!(
            store.apply(&op(r#"{"type":"read","key":1}"#)),
            KvResult::ReadOk(Json::UInt(4))
        );
        // "1" is another key than 1.
        assert!(matches!(
            store.apply(&op(r#"{"type":"read","key":"1"}"#)),
            KvResult::Error { code: 20, .. }
        ));
        assert_eq!(
            store.apply(&op(
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
