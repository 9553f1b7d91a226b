fn main() {
    eprintln!("chaos: not yet");
    std::process::exit(2);
}
