//! What the attributes refuse, and how: each case's `.stderr` holds the full message.
//!
//! `tests/ui/*.rs` must fail to compile with exactly the errors in their `.stderr` files (a
//! refused signature gives one error, not a cascade at its uses); `tests/ui/pass/*.rs` must
//! compile without a warning under `#![deny(warnings)]`.

#[test]
fn process_signatures_that_cannot_cross_a_process_boundary_are_rejected() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
