use std::borrow::Cow;

use pycsp::prelude::*;

#[process]
fn greet(name: Cow<'static, str>) -> usize {
    name.len()
}

fn main() {}
