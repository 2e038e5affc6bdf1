//! `hull-guest`: the in-sandbox agent (see the `hull-guest` crate).
fn main() {
    std::process::exit(hull_guest::main());
}
