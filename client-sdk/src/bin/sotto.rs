//! `sotto`: the command-line client.

fn main() {}
