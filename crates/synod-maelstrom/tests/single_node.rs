//! The `synod-maelstrom` binary on its own: the seed's sample test cases byte for byte,
//! and single-node lin-kv requests, errors and bad input. Each test pipes its input in,
//! closes stdin, and reads every line the node wrote before exiting.

use std::io::Write;
use std::process::{Command, Stdio};

fn run_node(input: &[&str]) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_synod-maelstrom"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn synod-maelstrom");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for line in input {
            writeln!(stdin, "{line}").expect("write a line");
        }
    }
    let output = child.wait_with_output().expect("node exits");
    assert!(
        output.status.success(),
        "node exited with {}",
        output.status
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(str::to_string)
        .collect()
}

const INIT: &str = r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#;
const INIT_OK: &str =
    r#"{"src": "n1", "dest": "c0", "body": {"type": "init_ok", "in_reply_to": 1, "msg_id": 0}}"#;

#[test]
fn seed_sample_first_slot_requires_phase1() {
    let lines = run_node(&[
        INIT,
        r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":2,"slot":1,"value":"cmd1"}}"#,
    ]);
    assert_eq!(
        lines,
        [
            INIT_OK,
            r#"{"src": "n1", "dest": "c1", "body": {"type": "multi_paxos_propose_ok", "in_reply_to": 2, "slot": 1, "phase1_skipped": false, "chosen": true, "value": "cmd1", "msg_id": 1}}"#,
        ]
    );
}

#[test]
fn seed_sample_subsequent_slots_skip_phase1() {
    let lines = run_node(&[
        INIT,
        r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":2,"slot":1,"value":"cmd1"}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":3,"slot":2,"value":"cmd2"}}"#,
    ]);
    assert_eq!(
        lines,
        [
            INIT_OK,
            r#"{"src": "n1", "dest": "c1", "body": {"type": "multi_paxos_propose_ok", "in_reply_to": 2, "slot": 1, "phase1_skipped": false, "chosen": true, "value": "cmd1", "msg_id": 1}}"#,
            r#"{"src": "n1", "dest": "c1", "body": {"type": "multi_paxos_propose_ok", "in_reply_to": 3, "slot": 2, "phase1_skipped": true, "chosen": true, "value": "cmd2", "msg_id": 2}}"#,
        ]
    );
}

#[test]
fn proposal_for_a_taken_slot_is_answered_with_the_value_chosen_there() {
    let lines = run_node(&[
        INIT,
        r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":1,"slot":1,"value":"set x=1"}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":2,"slot":2,"value":"set y=2"}}"#,
        r#"{"src":"c2","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":7,"slot":1,"value":"other"}}"#,
    ]);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let taken = lines
        .iter()
        .find(|line| line.contains(r#""in_reply_to": 7"#))
        .expect("an answer to msg 7");
    assert!(
        taken.contains(r#""slot": 1, "phase1_skipped": true, "chosen": true, "value": "set x=1""#),
        "{taken}"
    );
}

#[test]
fn lin_kv_on_one_node_reads_writes_and_reports_cas_errors() {
    let request = |msg_id: u64, body: &str| {
        format!(r#"{{"src":"c1","dest":"n1","body":{{"msg_id":{msg_id},{body}}}}}"#)
    };
    let input = [
        INIT.to_string(),
        request(2, r#""type":"read","key":1"#),
        request(3, r#""type":"cas","key":1,"from":1,"to":2"#),
        request(4, r#""type":"write","key":1,"value":5"#),
        request(5, r#""type":"cas","key":1,"from":4,"to":6"#),
        request(6, r#""type":"cas","key":1,"from":5,"to":6"#),
        request(7, r#""type":"read","key":1"#),
        request(
            8,
            r#""type":"write","key":"k","value":{"b":[1,2.5],"a":"é"}"#,
        ),
        request(9, r#""type":"read","key":"k""#),
    ];
    let input: Vec<&str> = input.iter().map(String::as_str).collect();
    let lines = run_node(&input);
    let body_of = |msg_id: u64| -> String {
        let marker = format!(r#""in_reply_to": {msg_id}"#);
        let line = lines
            .iter()
            .find(|line| line.contains(&marker))
            .unwrap_or_else(|| panic!("no answer to {msg_id}: {lines:#?}"));
        line.split(r#""body": "#)
            .nth(1)
            .expect("a body")
            .to_string()
    };
    assert!(body_of(2).starts_with(r#"{"type": "error", "in_reply_to": 2, "code": 20, "text": "#));
    assert!(body_of(3).starts_with(r#"{"type": "error", "in_reply_to": 3, "code": 20, "text": "#));
    assert!(body_of(4).starts_with(r#"{"type": "write_ok", "in_reply_to": 4, "msg_id": "#));
    assert!(body_of(5).starts_with(r#"{"type": "error", "in_reply_to": 5, "code": 22, "text": "#));
    assert!(body_of(6).starts_with(r#"{"type": "cas_ok", "in_reply_to": 6, "msg_id": "#));
    assert!(
        body_of(7).starts_with(r#"{"type": "read_ok", "in_reply_to": 7, "value": 6, "msg_id": "#)
    );
    // Values come back in the order and form they were written, rendered as Python does.
    assert!(
        body_of(9).starts_with(r#"{"type": "read_ok", "in_reply_to": 9, "value": {"b": [1, 2.5], "a": "\u00e9"}, "msg_id": "#),
        "{}",
        body_of(9)
    );
    assert_eq!(lines.len(), 9);
}

#[test]
fn bad_input_gets_error_replies_and_the_node_goes_on() {
    let lines = run_node(&[
        // Before init: not available yet.
        r#"{"src":"c1","dest":"n1","body":{"type":"read","msg_id":1,"key":1}}"#,
        INIT,
        // Not JSON at all, but the sender can still be read off it: 12.
        r#"{"src":"c1","dest":"n1","body":{"type":"read","msg_id":2,"key":"#,
        // No sender anywhere: nobody to answer.
        "this is not json",
        // Unknown type: 10.
        r#"{"src":"c1","dest":"n1","body":{"type":"frobnicate","msg_id":3}}"#,
        // A request missing its fields: 12.
        r#"{"src":"c1","dest":"n1","body":{"type":"write","msg_id":4,"key":1}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":5,"slot":0,"value":1}}"#,
        // No type: 12.
        r#"{"src":"c1","dest":"n1","body":{"msg_id":6}}"#,
        // Still serving.
        r#"{"src":"c1","dest":"n1","body":{"type":"write","msg_id":7,"key":1,"value":1}}"#,
    ]);
    let expected = [(1, 11), (2, 12), (3, 10), (4, 12), (5, 12), (6, 12)];
    for (msg_id, code) in expected {
        let marker = format!(r#""type": "error", "in_reply_to": {msg_id}, "code": {code}, "#);
        assert!(
            lines.iter().any(|line| line.contains(&marker)),
            "no error {code} for msg {msg_id}: {lines:#?}"
        );
    }
    assert!(lines
        .iter()
        .any(|line| line.contains(r#""type": "write_ok", "in_reply_to": 7"#)));
    assert_eq!(lines.len(), 8, "{lines:#?}");
}
