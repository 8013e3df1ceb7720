//! `edge-provision`: the fleet engineer's tool for the fleet PKI and unit enrolment.
fn main() {
    eprintln!("edge-provision: not yet available in this build");
    std::process::exit(2)
}
