//! Scratch driver used while tuning bounds (removed before merge).
use std::time::Duration;
use synod_model::{check, ModelOptions, Mutant};

fn main() {
    let mut options = ModelOptions::default();
    let env = |name: &str| std::env::var(name).ok();
    macro_rules! opt {
        ($name:literal, $field:ident) => {
            if let Some(v) = env($name) {
                options.$field = v.parse().unwrap();
            }
        };
    }
    opt!("TICKS", ticks);
    opt!("SLOTS", slots);
    opt!("BALLOT", max_ballot);
    opt!("VALUES", values);
    opt!("READS", reads);
    opt!("HB", heartbeat_interval_ticks);
    opt!("RT", retransmit_ticks);
    opt!("DRIFT", max_clock_drift_percent);
    opt!("SKEW", max_skew);
    opt!("SLOW", slow_disks);
    opt!("STALLS", stalls);
    opt!("CRASHES", crashes);
    opt!("COMPACTIONS", compactions);
    opt!("NODES", nodes);
    opt!("DUPS", duplicates);
    opt!("TIMEOUTS", timeouts);
    if let Some(v) = env("DELAY") {
        options.max_delay = if v == "none" {
            None
        } else {
            Some(v.parse().unwrap())
        };
    }
    opt!("THREADS", threads);
    if let Some(v) = env("E") {
        options.election_timeout_ticks = v.parse().unwrap();
        options.lease_ticks = v.parse().unwrap();
    }
    if let Some(v) = env("LEASE") {
        options.lease_ticks = v.parse().unwrap();
    }
    if let Some(v) = env("DEPTH") {
        options.depth = if v == "none" {
            None
        } else {
            Some(v.parse().unwrap())
        };
    }
    if let Some(v) = env("PUNTIL") {
        options.propose_until = if v == "none" {
            None
        } else {
            Some(v.parse().unwrap())
        };
    }
    if let Some(v) = env("ANYTIME") {
        options.faults_at_ticks = v != "1";
    }
    if let Some(v) = env("SEEDS") {
        options.seeds = v.split(',').map(|x| x.parse().unwrap()).collect();
    }
    let ids = |v: String| -> Vec<u64> { v.split(',').map(|x| x.parse().unwrap()).collect() };
    if let Some(v) = env("PLACE") {
        options.placement = Some(ids(v));
    }
    if let Some(v) = env("SNODES") {
        options.stall_nodes = Some(ids(v));
    }
    if let Some(v) = env("RNODES") {
        options.read_nodes = Some(ids(v));
    }
    if let Some(v) = env("TNODES") {
        options.timeout_nodes = Some(ids(v));
    }
    if let Some(v) = env("CUT") {
        options.cut_links = v
            .split(',')
            .map(|pair| {
                let (a, b) = pair.split_once('-').unwrap();
                (a.parse().unwrap(), b.parse().unwrap())
            })
            .collect();
    }
    if let Some(v) = env("LOST") {
        options.lost_kinds = v
            .split(',')
            .map(|k| &*Box::leak(k.to_string().into_boxed_str()))
            .collect();
    }
    if env("DFS").is_some() {
        options.depth_first = true;
    }
    if let Some(v) = env("MUTANT") {
        options.mutant = Some(v.parse::<Mutant>().unwrap());
    }
    options.validate().unwrap();
    if let Some(steps) = env("WALK") {
        use stateright::Model;
        let model = synod_model::SynodModel::new(options.clone());
        let mut state = model.init_states().remove(0);
        let mut seed: u64 = env("SEED").map(|s| s.parse().unwrap()).unwrap_or(1);
        let mut path = Vec::new();
        for _ in 0..steps.parse::<usize>().unwrap() {
            let mut actions = Vec::new();
            model.actions(&state, &mut actions);
            if actions.len() > 1 {
                actions.retain(|a| !matches!(a, synod_model::cluster::Action::TickAll));
            }
            if actions.is_empty() {
                break;
            }
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let action = actions[(seed >> 33) as usize % actions.len()].clone();
            let Some(next) = model.next_state(&state, action.clone()) else {
                break;
            };
            if !model.within_boundary(&next) {
                break;
            }
            path.push(action);
            state = next;
        }
        print!("{}", synod_model::trace::render(&model, 0, &path));
        return;
    }
    let (report, found) = check(&options, Duration::from_secs(10), |p| {
        eprintln!(
            "  {} states, {} unique, depth {}, {:.0} s",
            p.states,
            p.unique_states,
            p.depth,
            p.elapsed.as_secs_f64()
        )
    });
    let model = synod_model::SynodModel::new(options);
    if env("TRACE").is_some() {
        for d in &found {
            println!("{} ({}):", d.property, d.actions.len());
            print!(
                "{}",
                synod_model::trace::render(&model, d.initial, &d.actions)
            );
        }
    }
    println!("{}", serde_json::to_string(&report).unwrap());
}
