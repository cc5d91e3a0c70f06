//! Concurrent etcd v3 clients that record what they did: linearizable `Range`, `Put`, and
//! compare-and-set as a `Txn` (value equal → put, else read the key), each with a deadline.
//! An operation whose outcome the client cannot know — a deadline passed, a connection lost
//! after the request went out — is recorded as indeterminate; only a connection refused
//! before sending counts as failed.

use crate::history::{unique_value, Outcome, Recorded, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use synod_sim::linearizability::{RegisterOp, RegisterRet};
use tonic::transport::{Channel, Endpoint};

/// What every client shares: the run's clock, the stop flag and live counters.
pub struct Shared {
    pub epoch: Instant,
    pub stop: AtomicBool,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub indeterminate: AtomicU64,
    /// Nanoseconds since `epoch` of the latest successful operation.
    pub last_ok_ns: AtomicU64,
}

impl Shared {
    pub fn new(epoch: Instant) -> Shared {
        Shared {
            epoch,
            stop: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            indeterminate: AtomicU64::new(0),
            last_ok_ns: AtomicU64::new(0),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// One client's settings.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    pub id: u32,
    /// Index of the member it talks to, and that member's URL.
    pub member: usize,
    pub url: String,
    pub keys: u32,
    pub seed: u64,
    pub deadline: Duration,
}

/// The key's name in the store.
pub fn key_name(key: u32) -> Vec<u8> {
    format!("chaos/{key:03}").into_bytes()
}

fn encode(value: Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// A stored value as written by [`encode`]; anything else is reported as `Value::MAX`,
/// which no client writes, so the checker flags it.
fn decode(bytes: &[u8]) -> Value {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(Value::MAX)
}

pub fn channel(url: &str, deadline: Duration) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|error| format!("bad endpoint {url}: {error}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500))
        .timeout(deadline)
        .connect_lazy())
}

/// Failed (not sent: the connection could not be made) or indeterminate (anything else).
pub fn classify(status: &tonic::Status) -> Outcome {
    let mut text = format!("{status}");
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        text.push_str(&format!(": {error}"));
        source = error.source();
    }
    let text = text.to_lowercase();
    let never_sent = status.code() == tonic::Code::Unavailable
        && (text.contains("tcp connect error")
            || text.contains("error trying to connect")
            || text.contains("connection refused"));
    if never_sent {
        Outcome::Failed
    } else {
        Outcome::Indeterminate
    }
}

fn request<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// Sends one operation and returns its result.
async fn perform(
    kv: &mut KvClient<Channel>,
    key: u32,
    op: &RegisterOp<Value>,
    deadline: Duration,
) -> Result<RegisterRet<Value>, tonic::Status> {
    let name = key_name(key);
    match op {
        RegisterOp::Read => {
            let range = pb::RangeRequest {
                key: name,
                ..Default::default()
            };
            let response = kv.range(request(range, deadline)).await?.into_inner();
            Ok(RegisterRet::ReadOk(
                response.kvs.first().map(|kv| decode(&kv.value)),
            ))
        }
        RegisterOp::Write(value) => {
            let put = pb::PutRequest {
                key: name,
                value: encode(*value),
                ..Default::default()
            };
            kv.put(request(put, deadline)).await?;
            Ok(RegisterRet::WriteOk)
        }
        RegisterOp::Cas { from, to } => {
            let txn = cas_request(name, *from, *to);
            let response = kv.txn(request(txn, deadline)).await?.into_inner();
            if response.succeeded {
                return Ok(RegisterRet::CasOk);
            }
            let current = response
                .responses
                .first()
                .and_then(|op| match &op.response {
                    Some(pb::response_op::Response::ResponseRange(range)) => range.kvs.first(),
                    _ => None,
                });
            Ok(match current {
                None => RegisterRet::CasNotFound,
                Some(_) => RegisterRet::CasMismatch,
            })
        }
    }
}

/// If the key holds `from`, put `to`; else read the key (to tell missing from different).
fn cas_request(key: Vec<u8>, from: Value, to: Value) -> pb::TxnRequest {
    let compare = pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Value as i32,
        key: key.clone(),
        range_end: Vec::new(),
        target_union: Some(pb::compare::TargetUnion::Value(encode(from))),
    };
    let put = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.clone(),
            value: encode(to),
            ..Default::default()
        })),
    };
    let range = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key,
            ..Default::default()
        })),
    };
    pb::TxnRequest {
        compare: vec![compare],
        success: vec![put],
        failure: vec![range],
    }
}

/// Chooses the next operation: 45 % reads, 30 % writes, 25 % compare-and-sets from the
/// value this client last saw on the key (a read where it has seen none).
struct Chooser {
    rng: ChaCha8Rng,
    client: u32,
    sequence: u32,
    keys: u32,
    seen: HashMap<u32, Value>,
}

impl Chooser {
    fn next(&mut self) -> (u32, RegisterOp<Value>) {
        let key = self.rng.gen_range(0..self.keys);
        let roll = self.rng.gen_range(0..100);
        if roll < 45 {
            return (key, RegisterOp::Read);
        }
        self.sequence += 1;
        let value = unique_value(self.client, self.sequence);
        match self.seen.get(&key) {
            Some(&from) if roll >= 75 => (key, RegisterOp::Cas { from, to: value }),
            None if roll >= 75 => (key, RegisterOp::Read),
            _ => (key, RegisterOp::Write(value)),
        }
    }

    fn learn(&mut self, key: u32, op: &RegisterOp<Value>, ret: &RegisterRet<Value>) {
        match (op, ret) {
            (_, RegisterRet::ReadOk(Some(value)))
            | (RegisterOp::Write(value), RegisterRet::WriteOk) => {
                self.seen.insert(key, *value);
            }
            (RegisterOp::Cas { to, .. }, RegisterRet::CasOk) => {
                self.seen.insert(key, *to);
            }
            (_, RegisterRet::CasMismatch | RegisterRet::CasNotFound) => {
                self.seen.remove(&key);
            }
            _ => {}
        }
    }
}

/// Runs one client until `shared.stop`; returns its history.
pub async fn run_client(spec: ClientSpec, shared: Arc<Shared>) -> Vec<Recorded> {
    let mut history = Vec::new();
    let Ok(channel) = channel(&spec.url, spec.deadline) else {
        return history;
    };
    let mut kv = KvClient::new(channel);
    let mut chooser = Chooser {
        rng: ChaCha8Rng::seed_from_u64(spec.seed),
        client: spec.id,
        sequence: 0,
        keys: spec.keys,
        seen: HashMap::new(),
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let (key, op) = chooser.next();
        let call_ns = shared.now_ns();
        let backstop = spec.deadline + Duration::from_millis(250);
        let result =
            tokio::time::timeout(backstop, perform(&mut kv, key, &op, spec.deadline)).await;
        let return_ns = shared.now_ns();
        let outcome = match result {
            Ok(Ok(ret)) => {
                chooser.learn(key, &op, &ret);
                shared.ok.fetch_add(1, Ordering::Relaxed);
                shared.last_ok_ns.fetch_max(return_ns, Ordering::Relaxed);
                Outcome::Ok(ret)
            }
            Ok(Err(status)) => classify(&status),
            Err(_elapsed) => Outcome::Indeterminate,
        };
        let pause = match outcome {
            Outcome::Ok(_) => Duration::from_millis(chooser.rng.gen_range(0..4)),
            Outcome::Failed => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                Duration::from_millis(50)
            }
            Outcome::Indeterminate => {
                shared.indeterminate.fetch_add(1, Ordering::Relaxed);
                Duration::from_millis(20)
            }
        };
        history.push(Recorded {
            client: spec.id,
            member: spec.member,
            key,
            op,
            call_ns,
            return_ns,
            outcome,
        });
        tokio::time::sleep(pause).await;
    }
    history
}

/// A linearizable read of `key` through any of `urls`, retried until `deadline`.
pub async fn final_read(urls: &[String], key: u32, deadline: Duration) -> Option<Option<Value>> {
    let give_up = Instant::now() + deadline;
    let mut attempt = 0;
    while Instant::now() < give_up {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        if let Ok(channel) = channel(url, Duration::from_secs(2)) {
            let mut kv = KvClient::new(channel);
            let read = perform(&mut kv, key, &RegisterOp::Read, Duration::from_secs(2));
            if let Ok(Ok(RegisterRet::ReadOk(value))) =
                tokio::time::timeout(Duration::from_millis(2500), read).await
            {
                return Some(value);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_failed_and_a_deadline_is_indeterminate() {
        let refused = tonic::Status::unavailable(
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
        );
        assert_eq!(classify(&refused), Outcome::Failed);
        let late = tonic::Status::deadline_exceeded("Timeout expired");
        assert_eq!(classify(&late), Outcome::Indeterminate);
        let server = tonic::Status::unavailable("etcdserver: request timed out (no leader)");
        assert_eq!(classify(&server), Outcome::Indeterminate);
    }

    #[test]
    fn values_round_trip_and_garbage_is_not_a_client_value() {
        let value = unique_value(3, 17);
        assert_eq!(decode(&encode(value)), value);
        assert_eq!(decode(b"bench"), Value::MAX);
    }

    #[test]
    fn a_client_compares_only_with_a_value_it_saw() {
        let mut chooser = Chooser {
            rng: ChaCha8Rng::seed_from_u64(7),
            client: 0,
            sequence: 0,
            keys: 1,
            seen: HashMap::new(),
        };
        for _ in 0..200 {
            let (key, op) = chooser.next();
            if let RegisterOp::Cas { from, .. } = op {
                assert_eq!(chooser.seen.get(&key), Some(&from));
            }
            let ret = match &op {
                RegisterOp::Read => RegisterRet::ReadOk(chooser.seen.get(&key).copied()),
                RegisterOp::Write(_) => RegisterRet::WriteOk,
                RegisterOp::Cas { .. } => RegisterRet::CasOk,
            };
            chooser.learn(key, &op, &ret);
        }
        assert!(chooser.sequence > 0);
    }
}
