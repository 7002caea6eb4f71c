//! Writes the scenario captures (`scenarios DIR`) or the benchmark capture (`bench FILE [PACKETS]`).

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
        _ => {
            eprintln!("usage: vmsentry-synth scenarios DIR | vmsentry-synth bench FILE [PACKETS]");
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
