//! `synod-maelstrom`: a Maelstrom node. Takes no arguments. Reads envelopes from stdin,
//! writes envelopes to stdout (one per line, flushed), logs to stderr.
//!
//! One thread reads stdin lines into a channel; the main loop sets the node's clock to
//! the real time elapsed (in ticks of `TICK_NANOS`) before every input and at every
//! tick boundary, and handles lines as they come. At end of input it finishes the
//! requests still pending (for at most `DRAIN_LIMIT`) and exits.

use std::io::{BufRead, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use synod_maelstrom::server::TICK_NANOS;
use synod_maelstrom::{Server, ServerOptions};

/// After end of input, pending requests get this long to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

fn main() {
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(line) => {
                    if lines_tx.send(line).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    eprintln!("stdin: {error}");
                    return;
                }
            }
        }
    });

    let options = ServerOptions {
        life: rand::random(),
        ..ServerOptions::default()
    };
    let mut server = Server::new(options);
    let stdout = std::io::stdout();
    let start = Instant::now();
    // The clock is an input: read it before every input, never reuse a reading taken
    // before a wait (a stalled process must see its leases run out).
    let ticks_elapsed = || (start.elapsed().as_nanos() / u128::from(TICK_NANOS)) as u64;
    let mut input_closed_at: Option<Instant> = None;
    loop {
        server.advance_to(ticks_elapsed());
        let next_tick = start + Duration::from_nanos(TICK_NANOS.saturating_mul(server.now() + 1));
        let wait = next_tick.saturating_duration_since(Instant::now());
        if input_closed_at.is_some() {
            std::thread::sleep(wait);
        } else {
            match lines_rx.recv_timeout(wait) {
                Ok(line) => {
                    server.advance_to(ticks_elapsed());
                    server.handle_line(&line);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => input_closed_at = Some(Instant::now()),
            }
        }
        let output = server.take_output();
        if !output.is_empty() {
            let mut stdout = stdout.lock();
            for line in output {
                let written = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
                if let Err(error) = written {
                    eprintln!("stdout: {error}");
                    std::process::exit(1);
                }
            }
        }
        if let Some(closed_at) = input_closed_at {
            if !server.has_pending_requests() || closed_at.elapsed() >= DRAIN_LIMIT {
                if let (Some(node), Some(stats)) = (server.node_id(), server.stats()) {
                    eprintln!("{node}: exiting; {stats:?}");
                }
                return;
            }
        }
    }
}
