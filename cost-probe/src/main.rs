use std::time::{Duration, Instant};

use cost_probe::probe::{self, OwnedEvent, Probe};

fn main() {
    env_logger::init();
    let pid: u32 = std::env::args().nth(1).unwrap().parse().unwrap();
    let mut p = match Probe::load() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    for t in probe::procscan::descendants(pid) {
        p.add_target(t).unwrap();
    }
    eprintln!("attached");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        p.poll(Duration::from_millis(10), |b| {
            match probe::event::decode(b) {
                Ok(e) => println!("{}", serde_json::to_string(&OwnedEvent::from_event(&e)).unwrap()),
                Err(e) => eprintln!("decode: {e}"),
            }
        })
        .unwrap();
    }
    eprintln!("lost {}", p.take_lost().unwrap());
}
