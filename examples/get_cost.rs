//! The per-call cost of a memory `get` through `Kv` and through the primitives, for
//! counting instructions under callgrind (deterministic, unlike timings on a shared
//! machine) or timing in-process. `docs/performance.md` quotes its output.
//!
//! ```text
//! cargo build --release --example get_cost
//! valgrind --tool=callgrind target/release/examples/get_cost kv 100000   # Ir total
//! target/release/examples/get_cost kv,primitive_with_key,primitive 1000000 15
//! ```
//!
//! Modes: `kv` (`Kv::get`), `primitive_with_key` (`Key::new` + `Backend::get`),
//! `primitive` (`Backend::get` on a prebuilt key), `key` (`Key::new` of `bench/key`),
//! `long_key` (`Key::new` of a 37-byte key). Arguments: comma-separated modes, calls
//! per round, rounds (with more than one round, the fastest round's ns per call is
//! printed per mode).

use std::hint::black_box;
use std::time::Instant;

use kvkit::memory::Memory;
use kvkit::{Backend, Key, Kv, PutOptions};

const KEY: &str = "bench/key";
const LONG_KEY: &str = "services/web/instances/10.0.0.12:8080";

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: get_cost MODE[,MODE...] CALLS [ROUNDS]";
    let modes = args.next().expect(usage);
    let calls: usize = args.next().and_then(|n| n.parse().ok()).expect(usage);
    let rounds: usize = args.next().map_or(1, |r| r.parse().expect(usage));
    let modes: Vec<&str> = modes.split(',').collect();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let kv = Kv::new(Memory::new());
    runtime.block_on(async {
        kv.put(KEY, vec![b'x'; 100], PutOptions::default())
            .await
            .expect("put");
        let prebuilt = Key::new(KEY).expect("valid key");
        let mut best = vec![f64::MAX; modes.len()];
        for _ in 0..rounds {
            for (slot, mode) in modes.iter().enumerate() {
                let started = Instant::now();
                match *mode {
                    "kv" => {
                        for _ in 0..calls {
                            black_box(kv.get(black_box(KEY)).await.expect("get"));
                        }
                    }
                    "primitive_with_key" => {
                        for _ in 0..calls {
                            let key = Key::new(black_box(KEY)).expect("valid key");
                            black_box(kv.backend().get(&key).await.expect("get"));
                        }
                    }
                    "primitive" => {
                        for _ in 0..calls {
                            black_box(kv.backend().get(black_box(&prebuilt)).await.expect("get"));
                        }
                    }
                    "key" => {
                        for _ in 0..calls {
                            black_box(Key::new(black_box(KEY)).expect("valid key"));
                        }
                    }
                    "long_key" => {
                        for _ in 0..calls {
                            black_box(Key::new(black_box(LONG_KEY)).expect("valid key"));
                        }
                    }
                    other => panic!("unknown mode {other:?}; {usage}"),
                }
                let per_call = started.elapsed().as_nanos() as f64 / calls as f64;
                best[slot] = best[slot].min(per_call);
            }
        }
        if rounds > 1 {
            for (mode, ns) in modes.iter().zip(&best) {
                println!("{mode}: {ns:.1} ns per call");
            }
        }
    });
}
