//! `synod-maelstrom`: a Maelstrom node. Takes no arguments. Reads envelopes from stdin,
//! writes envelopes to stdout (one per line, flushed), logs to stderr.
//!
//! One thread reads stdin lines into a channel; the main loop ticks the node every
//! `TICK` of real time and handles lines as they come. At end of input it finishes the
//! requests still pending (for at most `DRAIN_LIMIT`) and exits.

use std::io::{BufRead, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use synod_maelstrom::{Server, ServerOptions};

/// Real time per tick of the node's clock.
const TICK: Duration = Duration::from_millis(10);
/// After end of input, pending requests get this long to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// A process that was descheduled catches up at most this many ticks at once, so a
/// pause of the process itself does not look like a silent leader.
const MAX_CATCH_UP_TICKS: u32 = 3;

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

    let mut server = Server::new(ServerOptions::default());
    let stdout = std::io::stdout();
    let mut next_tick = Instant::now() + TICK;
    let mut input_closed_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= next_tick {
            let mut ticks = 0;
            while Instant::now() >= next_tick && ticks < MAX_CATCH_UP_TICKS {
                server.tick();
                next_tick += TICK;
                ticks += 1;
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
            }
        } else if input_closed_at.is_some() {
            std::thread::sleep(next_tick - now);
        } else {
            match lines_rx.recv_timeout(next_tick - now) {
                Ok(line) => server.handle_line(&line),
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
                return;
            }
        }
    }
}
