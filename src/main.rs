//! The `rust-raft-log` binary. The node (transport, event loop) is not built yet: see README.md.

fn main() {
    eprintln!("rust-raft-log: the node is not implemented yet; see README.md (issue 4)");
    std::process::exit(2);
}
