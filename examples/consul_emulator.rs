//! TEST TOOL, not a Consul server: serves kvkit's in-process Consul API emulator
//! (`kvkit::testing::consul_emulator`) on an ephemeral 127.0.0.1 port until killed, so
//! `loadgen --backend consul` has something to talk to on machines without Consul.
//!
//! ```text
//! cargo run --release --example consul_emulator --features consul,testing
//! ```
//!
//! Prints `127.0.0.1:PORT` on the first line of stdout, then serves. The emulator keeps
//! everything in memory and is built for testing, not for speed: its figures are for
//! orientation only and say nothing about a real Consul agent.

use kvkit::testing::consul_emulator::ConsulEmulator;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let emulator = ConsulEmulator::start_default().await?;
    println!("{}", emulator.addr());
    tokio::signal::ctrl_c().await?;
    emulator.shutdown();
    Ok(())
}
