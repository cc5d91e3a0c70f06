//! Scratch driver used while tuning bounds.
use std::time::Duration;
use synod_model::{check, ModelOptions, Mutant};

fn main() {
    let mut options = ModelOptions::default();
    let env = |name: &str| std::env::var(name).ok();
    if let Some(v) = env("TICKS") {
        options.ticks = v.parse().unwrap();
    }
    if let Some(v) = env("SLOTS") {
        options.slots = v.parse().unwrap();
    }
    if let Some(v) = env("BALLOT") {
        options.max_ballot = v.parse().unwrap();
    }
    if let Some(v) = env("DEPTH") {
        options.depth = Some(v.parse().unwrap());
    }
    if let Some(v) = env("VALUES") {
        options.values = v.parse().unwrap();
    }
    if let Some(v) = env("READS") {
        options.reads = v.parse().unwrap();
    }
    if let Some(v) = env("DUPS") {
        options.duplicates = v.parse().unwrap();
    }
    if let Some(v) = env("E") {
        options.election_timeout_ticks = v.parse().unwrap();
        options.lease_ticks = v.parse().unwrap();
    }
    if let Some(v) = env("HB") {
        options.heartbeat_interval_ticks = v.parse().unwrap();
    }
    if let Some(v) = env("RT") {
        options.retransmit_ticks = v.parse().unwrap();
    }
    if let Some(v) = env("DRIFT") {
        options.max_clock_drift_percent = v.parse().unwrap();
    }
    if let Some(v) = env("DELAY") {
        options.max_delay = Some(v.parse().unwrap());
    }
    if let Some(v) = env("PUNTIL") {
        options.propose_until = Some(v.parse().unwrap());
    }
    if let Some(v) = env("ANYTIME") {
        options.faults_at_ticks = v != "1";
    }
    if let Some(v) = env("SKEW") {
        options.max_skew = v.parse().unwrap();
    }
    if let Some(v) = env("SLOW") {
        options.slow_disks = v.parse().unwrap();
    }
    if let Some(v) = env("CRASHES") {
        options.crashes = v.parse().unwrap();
    }
    if let Some(v) = env("COMPACTIONS") {
        options.compactions = v.parse().unwrap();
    }
    if let Some(v) = env("NODES") {
        options.nodes = v.parse().unwrap();
    }
    if let Some(v) = env("MUTANT") {
        options.mutant = Some(v.parse::<Mutant>().unwrap());
    }
    options.validate().unwrap();
    if let Some(limit) = env("CENSUS") {
        use stateright::Model;
        use std::collections::{HashMap, HashSet};
        use synod_model::hashed::hash_of;
        let limit: usize = limit.parse().unwrap();
        let model = synod_model::SynodModel::new(options.clone());
        let mut seen = HashSet::new();
        let mut stack = model.init_states();
        let mut parts: Vec<HashSet<u64>> = vec![HashSet::new(); 6];
        let mut examples: HashMap<u64, String> = HashMap::new();
        while let Some(state) = stack.pop() {
            if !seen.insert(hash_of(&state)) || seen.len() > limit {
                continue;
            }
            for (i, r) in state.replicas.iter().enumerate() {
                let h = hash_of(&**r);
                if parts[i].insert(h) && i == 2 && examples.len() < 3000 {
                    examples.insert(h, format!("{:?}", r.node));
                }
            }
            parts[3].insert(hash_of(&*state.network));
            parts[4].insert(hash_of(&*state.ghost));
            parts[5].insert(hash_of(&(state.budget, state.happened)));
            let mut actions = Vec::new();
            model.actions(&state, &mut actions);
            for a in actions {
                if let Some(n) = model.next_state(&state, a) {
                    if model.within_boundary(&n) {
                        stack.push(n);
                    }
                }
            }
        }
        println!(
            "states {} n1 {} n2 {} n3 {} network {} ghost {} budget {}",
            seen.len(),
            parts[0].len(),
            parts[1].len(),
            parts[2].len(),
            parts[3].len(),
            parts[4].len(),
            parts[5].len()
        );
        if let Some(path) = env("DUMP") {
            let v: Vec<&String> = examples.values().collect();
            std::fs::write(
                path,
                v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
            )
            .unwrap();
        }
        return;
    }
    if let Some(steps) = env("WALK") {
        use stateright::Model;
        let model = synod_model::SynodModel::new(options.clone());
        let mut state = model.init_states().remove(0);
        let mut seed: u64 = env("SEED").map(|s| s.parse().unwrap()).unwrap_or(1);
        for n in 0..steps.parse::<usize>().unwrap() {
            let mut actions = Vec::new();
            model.actions(&state, &mut actions);
            if actions.is_empty() {
                break;
            }
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let action = actions[(seed >> 33) as usize % actions.len()].clone();
            println!(
                "{n:>3} [{} enabled] {}",
                actions.len(),
                synod_model::trace::describe_action(&state, &action)
            );
            let next = model.next_state(&state, action).unwrap();
            for (a, b) in state.replicas.iter().zip(next.replicas.iter()) {
                if a != b {
                    println!(
                        "      n{} changed: {}",
                        a.id,
                        diff(&format!("{:?}", **a), &format!("{:?}", **b))
                    );
                }
            }
            state = next;
            if !model.within_boundary(&state) {
                println!("out of bounds");
                break;
            }
        }
        for r in &state.replicas {
            println!(
                "n{} clock {} status {:?}",
                r.id,
                r.clock,
                r.node.as_ref().map(|n| n.status())
            );
        }
        println!("network {}", state.network.len());
        return;
    }
    let (report, found) = check(&options, Duration::from_secs(5), |p| {
        eprintln!(
            "{} states {} unique depth {} {:?}",
            p.states, p.unique_states, p.depth, p.elapsed
        );
    });
    let model = synod_model::SynodModel::new(options.clone());
    for d in &found {
        if d.failure || env("SHOW").is_some() {
            eprintln!(
                "== {} ({} actions, found {})\n{}",
                d.property,
                d.actions.len(),
                d.found_length,
                synod_model::trace::render(&model, &d.actions)
            );
        }
    }
    println!("{}", serde_json::to_string(&report).unwrap());
}

fn diff(a: &str, b: &str) -> String {
    let start = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let end = a
        .chars()
        .rev()
        .zip(b.chars().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let a_mid: String = a
        .chars()
        .skip(start.saturating_sub(40))
        .take((a.len() - end).saturating_sub(start) + 40)
        .collect();
    let b_mid: String = b
        .chars()
        .skip(start.saturating_sub(40))
        .take((b.len() - end).saturating_sub(start) + 40)
        .collect();
    format!("\n        was {a_mid}\n        now {b_mid}")
}
