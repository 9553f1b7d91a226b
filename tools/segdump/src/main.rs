fn main() {
    eprintln!("segdump: not implemented yet");
    std::process::exit(2);
}
