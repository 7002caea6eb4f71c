//! Writes the scenario captures (`scenarios DIR`), the benchmark capture (`bench FILE [PACKETS]`) or the datacenter mix (`dcmix FILE ...`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["scenarios", dir] => vmsentry::synth::scenario::write_all(&PathBuf::from(dir)),
        ["bench", file] => vmsentry::synth::scenario::write_bench(&PathBuf::from(file), 1_000_000),
        ["bench", file, n] => match n.parse() {
            Ok(n) => vmsentry::synth::scenario::write_bench(&PathBuf::from(file), n),
            Err(_) => {
                eprintln!("vmsentry-synth: PACKETS must be a whole number (got `{n}`)");
                return ExitCode::from(2);
            }
        },
        ["dcmix", file, rest @ ..] => return dcmix(file, rest),
        _ => {
            eprintln!("usage: vmsentry-synth scenarios DIR | vmsentry-synth bench FILE [PACKETS]");
            eprintln!("       vmsentry-synth dcmix FILE [--frames N] [--seed N] [--flows N] [--vxlan]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmsentry-synth: {e}");
            ExitCode::from(1)
        }
    }
}

/// The datacenter mix: writes it and prints what it holds.
fn dcmix(file: &str, args: &[&str]) -> ExitCode {
    let mut mix = vmsentry::synth::dcmix::DcMix::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| match it.next().map(|v| v.replace('_', "").parse::<u64>()) {
            Some(Ok(n)) => Ok(n),
            _ => Err(format!("{name} needs a whole number")),
        };
        let r = match *a {
            "--vxlan" => {
                mix.vxlan = true;
                Ok(())
            }
            "--frames" => num("--frames").map(|n| mix.frames = n),
            "--seed" => num("--seed").map(|n| mix.seed = n),
            "--flows" => num("--flows").map(|n| mix.flows = n.max(1) as usize),
            other => Err(format!("unknown option `{other}`")),
        };
        if let Err(e) = r {
            eprintln!("vmsentry-synth: {e}");
            return ExitCode::from(2);
        }
    }
    match mix.write(&PathBuf::from(file)) {
        Ok(stats) => {
            print!("{file}: {stats}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmsentry-synth: {file}: {e}");
            ExitCode::from(1)
        }
    }
}
